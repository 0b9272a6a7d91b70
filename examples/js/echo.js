// Gannet example guest: echoes the request body back with status 200 and
//   x-echo-method: <request method>
//   x-echo-path:   <request path including the query string>
// Works for requests without a body (e.g. GET): the response body is then empty.
async function handle(request) {
  const url = new URL(request.url);
  const body = new Uint8Array(await request.arrayBuffer());
  return new Response(body, {
    status: 200,
    headers: {
      'x-echo-method': request.method,
      'x-echo-path': url.pathname + url.search,
    },
  });
}

addEventListener('fetch', (event) => {
  event.respondWith(handle(event.request));
});
