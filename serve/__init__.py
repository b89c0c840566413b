"""``soat serve``: the endless panorama over HTTP and WebSocket, with a browser viewer.

Needs the ``serve`` extra (Starlette, uvicorn, websockets). ``app.create_app(G)``
builds the web app; ``cli`` holds the ``soat serve`` subcommand. Importing this
package needs none of the extra's dependencies.
"""
