// A method /admin/routes/:name does not take is answered 405 for a route that exists, and 404
// ROUTE_NOT_FOUND for one that does not, as POST and DELETE answer it (found by exploratory
// testing: GET /admin/routes/orders%2Fx answered 405 with `Allow: POST`, as if the route
// were there).
import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AdminServer } from '../../../src/proxy/admin/index.js'
import { startTestAdmin, adminToken as token } from './admin-support.js'

let server: AdminServer

beforeAll(async () => {
  server = await startTestAdmin({
    backend: {
      // Routes are looked up in the config in force.
      config: async () => ({ workers: 1, listeners: [{ routes: [{ name: 'orders' }] }] }),
      routes: async () => [{ pid: 1, routes: [{ name: 'orders', requestsByService: {} }] }],
    },
  })
})

afterAll(async () => {
  await server.close()
})

function send(method: string, path: string) {
  return new Promise<{ status: number; allow: string | undefined; body: string }>(
    (resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: server.address().port,
          method,
          path,
          headers: { authorization: `Bearer ${token}` },
        },
        (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (chunk: string) => {
            body += chunk
          })
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, body }),
          )
        },
      )
      req.on('error', reject)
      req.end()
    },
  )
}

describe('a method a route path does not take', () => {
  it.each([
    ['GET', '/admin/routes/orders%2Fx'],
    ['GET', '/admin/routes/nope'],
    ['PUT', '/admin/routes/nope/override'],
    ['POST', '/admin/routes/nope/mismatches'],
  ])('%s %s: 404 ROUTE_NOT_FOUND for a route that does not exist', async (method, path) => {
    const res = await send(method, path)
    expect(res.status).toBe(404)
    expect(JSON.parse(res.body)).toMatchObject({ code: 'ROUTE_NOT_FOUND' })
    expect(res.allow).toBeUndefined()
  })

  it.each([
    ['GET', '/admin/routes/orders', 'POST'],
    ['PUT', '/admin/routes/orders/override', 'DELETE'],
    ['POST', '/admin/routes/orders/mismatches', 'GET, HEAD'],
  ])('%s %s: 405 with Allow for a route that exists', async (method, path, allow) => {
    const res = await send(method, path)
    expect(res.status).toBe(405)
    expect(res.allow).toBe(allow)
  })
})
