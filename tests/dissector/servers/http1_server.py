"""A small aiohttp HTTP/1.1 server for the tshark comparison: keep-alive, chunked, statuses."""

import sys

from aiohttp import web


async def index(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"]})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, status=201)


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(5):
        await resp.write(f"chunk {i}\n".encode() * 50)
    await resp.write_eof()
    return resp


async def missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="nope\n")


async def boom(request: web.Request) -> web.Response:
    return web.Response(status=500, text="boom\n")


async def delete(request: web.Request) -> web.Response:
    return web.Response(status=204)


app = web.Application()
app.router.add_get("/", index)
app.router.add_get("/items/{id}", item)
app.router.add_post("/echo", echo)
app.router.add_put("/echo", echo)
app.router.add_get("/chunked", chunked)
app.router.add_get("/missing", missing)
app.router.add_get("/boom", boom)
app.router.add_delete("/items/{id}", delete)
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), print=lambda *a: print("ready", flush=True))
