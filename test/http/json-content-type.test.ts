import { afterEach, expect, it } from 'vitest'
import { createHttpClient, type HttpClient } from '../../src/http/index.js'
import { startServer, type TestServer } from './servers.js'

let server: TestServer | undefined
let client: HttpClient | undefined

afterEach(async () => {
  await client?.close()
  await server?.close()
  client = undefined
  server = undefined
})

// A service-wide content-type is the default for bodies the caller hands over as they are; a
// `json` body is JSON whatever that default says, so only the call's own header may override it.
it('json sends application/json over a service default content-type, not over the call', async () => {
  server = await startServer((_req, res) => {
    res.end()
  })
  client = createHttpClient({
    services: { svc: { baseUrl: server.url, headers: { 'Content-Type': 'text/plain' } } },
  })
  await client.request('svc', { method: 'POST', path: '/json', json: { n: 1 } })
  await client.request('svc', { method: 'POST', path: '/raw', body: 'plain' })
  await client.request('svc', {
    method: 'POST',
    path: '/own',
    json: { n: 2 },
    headers: { 'content-type': 'application/merge-patch+json' },
  })
  const [json, raw, own] = server.hits
  expect(json?.headers['content-type']).toBe('application/json')
  expect(raw?.headers['content-type']).toBe('text/plain')
  expect(own?.headers['content-type']).toBe('application/merge-patch+json')
})
