// An upstream answer the proxy accepts with framing a strict client refuses must reach the
// client with one framing only. RFC 9110 §8.6 lets a recipient take repeated Content-Length
// lines of one value as that value; forwarded as they came, node's own client (llhttp) refuses
// the answer ("Duplicate Content-Length"), though the proxy read it as well-formed. Real
// sockets: a scripted upstream that writes exact bytes, the whole runtime from YAML, and both
// listener kinds (the ambassador's fast path writes its own heads).
import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Proxy as RunningProxy } from '../../../src/proxy/runtime.js'
import { startOneServiceProxy } from '../support/one-service-proxy.js'
import { sendRaw } from '../support/raw-http.js'
import { type ScriptedUpstream, startScriptedUpstream } from '../support/raw-upstream.js'

let upstream: ScriptedUpstream
let proxy: RunningProxy

beforeAll(async () => {
  upstream = await startScriptedUpstream(
    'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc',
  )
  proxy = await startOneServiceProxy(upstream.url)
})

afterAll(async () => {
  await proxy?.close(0)
  await upstream?.close()
})

function nodeGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = ''
      res.setEncoding('latin1')
      res.on('data', (chunk: string) => {
        body += chunk
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

describe('repeated Content-Length lines of one value from the upstream', () => {
  it.each([
    ['gateway', 'in', '/x'],
    ['ambassador', 'out', '/app/x'],
  ])('reach the client as one Content-Length on the %s', async (_kind, listener, path) => {
    const port = proxy.address(listener).port
    const response = await sendRaw(
      port,
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
    )
    expect(response.status).toBe(200)
    const head = response.raw.slice(0, response.raw.indexOf('\r\n\r\n'))
    expect(head.match(/^content-length:.*$/gim)).toHaveLength(1)
    expect(response.body).toBe('abc')
    // What a strict client makes of it: node's own parser refuses two Content-Length lines.
    expect(await nodeGet(port, path)).toEqual({ status: 200, body: 'abc' })
  })
})
