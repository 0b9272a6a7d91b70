// Gannet example guest: responds 200 text/plain "hello from js\n".
addEventListener('fetch', (event) => {
  event.respondWith(
    new Response('hello from js\n', {
      status: 200,
      headers: { 'content-type': 'text/plain' },
    }),
  );
});
