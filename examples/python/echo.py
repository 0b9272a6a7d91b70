"""Gannet example guest: echoes the request body back, streaming it chunk by chunk.

Responds 200 with the request body bytes as the response body and the headers
  x-echo-method: <request method>
  x-echo-path:   <request path including the query string>
A request without a body (e.g. GET) gets an empty response body.
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import types
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# blocking-write-and-flush accepts at most 4096 bytes per call.
WRITE_MAX = 4096
READ_MAX = 64 * 1024

_METHODS = {
    types.Method_Get: "GET",
    types.Method_Head: "HEAD",
    types.Method_Post: "POST",
    types.Method_Put: "PUT",
    types.Method_Delete: "DELETE",
    types.Method_Connect: "CONNECT",
    types.Method_Options: "OPTIONS",
    types.Method_Trace: "TRACE",
    types.Method_Patch: "PATCH",
}


def method_name(method: types.Method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return _METHODS[type(method)]


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = method_name(request.method())
        path = request.path_with_query() or "/"
        headers = Fields.from_list(
            [
                ("x-echo-method", method.encode()),
                ("x-echo-path", path.encode()),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        out_body = response.body()
        in_body = request.consume()
        # Send the head now; the body follows as it is read.
        ResponseOutparam.set(response_out, Ok(response))

        with in_body.stream() as src, out_body.write() as dst:
            while True:
                try:
                    chunk = src.blocking_read(READ_MAX)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break  # end of the request body
                    raise
                for i in range(0, len(chunk), WRITE_MAX):
                    dst.blocking_write_and_flush(chunk[i : i + WRITE_MAX])
        # Both streams are dropped (the `with` above) before their bodies finish.
        IncomingBody.finish(in_body)
        OutgoingBody.finish(out_body, None)
