// The fast path's response under backpressure: a large upstream body, streamed by the
// service runtime (Http1Pool on the upstream side) into a FastResponse whose client reads
// slowly, must arrive whole and in order (chunked, since the upstream sends no length), and the
// connection must then serve its next request.

import { createHash } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { connect } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ServiceRuntime } from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { serviceConfig } from '../upstream/helpers.js'
import { contextWith, listenerConfig, registryOf } from './harness.js'

const big = Buffer.alloc(5 * 1024 * 1024)
for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff
const digest = (data: Buffer): string => createHash('sha256').update(data).digest('hex')

let upstream: Server
let services: ServiceRuntime[] = []
let server: ListenerServer
let port: number

beforeAll(async () => {
  // Writes the body in 64 KiB pieces, honouring its own backpressure, with no Content-Length.
  upstream = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    let at = 0
    const pump = (): void => {
      while (at < big.length) {
        const room = res.write(big.subarray(at, at + 65_536))
        at += 65_536
        if (!room) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  const upstreamPort = await listenOnLoopback(upstream)
  const url = `http://127.0.0.1:${upstreamPort}`
  const { ctx } = contextWith(() => registryOf(services))
  services = [createServiceRuntime(serviceConfig([url], { name: 'orders' }), ctx)]
  const listener = listenerConfig()
  server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
  port = (await server.listen()).port
})

afterAll(async () => {
  await server.close()
  for (const service of services) await service.close()
  await new Promise<void>((resolve) => upstream.close(() => resolve()))
})

/** Reads chunked responses off `data`, from `at`; undefined while one is incomplete. */
function dechunk(data: Buffer, at: number): { body: Buffer; end: number } | undefined {
  const parts: Buffer[] = []
  let cursor = at
  for (;;) {
    const lineEnd = data.indexOf('\r\n', cursor)
    if (lineEnd < 0) return undefined
    const sizeText = data.subarray(cursor, lineEnd).toString('latin1')
    if (!/^[0-9a-f]{1,8}$/i.test(sizeText))
      throw new Error(`bad chunk size line: ${sizeText.slice(0, 40)}`)
    const size = Number.parseInt(sizeText, 16)
    if (size === 0) {
      if (data.length < lineEnd + 4) return undefined
      return { body: Buffer.concat(parts), end: lineEnd + 4 }
    }
    if (data.length < lineEnd + 2 + size + 2) return undefined
    parts.push(data.subarray(lineEnd + 2, lineEnd + 2 + size))
    cursor = lineEnd + 2 + size + 2
  }
}

it('streams a 5 MiB body to a slow reader whole, then serves the next request', async () => {
  const request = `GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`
  const bodies = await new Promise<Buffer[]>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let received = Buffer.alloc(0)
    const done: Buffer[] = []
    socket.on('error', reject)
    socket.on('connect', () => socket.write(request))
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      if (received.length > 3 * big.length) {
        socket.destroy()
        reject(new Error(`${received.length} bytes received without two whole responses`))
        return
      }
      // A slow reader: the proxy's socket buffer fills and its writes must wait for drain.
      socket.pause()
      setImmediate(() => socket.resume())
      for (;;) {
        const headEnd = received.indexOf('\r\n\r\n')
        if (headEnd < 0) return
        const head = received.subarray(0, headEnd).toString('latin1')
        if (!head.includes('transfer-encoding: chunked')) {
          reject(new Error(`not chunked: ${head}`))
          return
        }
        let response: ReturnType<typeof dechunk>
        try {
          response = dechunk(received, headEnd + 4)
        } catch (error) {
          socket.destroy()
          reject(error)
          return
        }
        if (response === undefined) return
        done.push(response.body)
        received = received.subarray(response.end)
        if (done.length === 1) socket.write(request)
        if (done.length === 2) {
          socket.destroy()
          resolve(done)
          return
        }
      }
    })
  })
  for (const body of bodies) {
    expect(body.length).toBe(big.length)
    expect(digest(body)).toBe(digest(big))
  }
}, 60_000)
