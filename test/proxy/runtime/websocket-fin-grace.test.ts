// A WebSocket tunnel whose client has gone (it ended its side) to an upstream that does not
// close after the FIN the proxy passes on: exploratory testing found the tunnel, and its
// upstream connection, held open for idleTimeoutMs (5 min by default), because the 5 s close
// grace started only when one side had fully closed. It now starts at the first side's end.
// The proxy runs as users run it (startProxy from YAML) on an injected clock.
import { createHash } from 'node:crypto'
import { connect, createServer, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'

let proxy: RunningProxy | undefined
const cleanups: (() => Promise<void> | void)[] = []

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

/**
 * A WebSocket endpoint that accepts the handshake and then neither sends nor closes anything,
 * whatever it receives, the client's FIN included (allowHalfOpen).
 */
async function stubbornUpstream(): Promise<{
  url: string
  sockets: Socket[]
  ended: () => number
}> {
  const sockets: Socket[] = []
  let ended = 0
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.push(socket)
    socket.on('error', () => {})
    socket.on('end', () => ended++)
    let head = ''
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      socket.off('data', onData)
      socket.resume()
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? ''
      const accept = createHash('sha1')
        .update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
        .digest('base64')
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
      )
    }
    socket.on('data', onData)
  })
  const port = await listenOnLoopback(server)
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  )
  return { url: `http://127.0.0.1:${port}`, sockets, ended: () => ended }
}

describe('a tunnel whose client ended its side', () => {
  it('is cut 5 s after the FIN when the upstream does not close (clock-driven)', async () => {
    const up = await stubbornUpstream()
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: `
services:
  stub: { endpoints: [${up.url}] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: chat, match: { prefix: /chat }, targets: [{ service: stub }], websocket: true }
`,
      logger: createJsonLogger({ level: 'silent' }),
      clock,
    })
    const client = connect({ port: proxy.address('in').port, host: '127.0.0.1' })
    client.on('error', () => {})
    cleanups.push(() => {
      client.destroy()
    })
    let closed = false
    client.on('close', () => {
      closed = true
    })
    let answer = ''
    client.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1')
    })
    client.write(
      'GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    await until(() => answer.includes('\r\n\r\n'), 'the 101')
    expect(answer).toMatch(/^HTTP\/1\.1 101 /)
    // The client leaves: its FIN reaches the upstream, which keeps its side open.
    client.end()
    await until(() => up.ended() === 1, "the client's FIN at the upstream")
    await clock.advance(4_999)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(closed).toBe(false)
    await clock.advance(1)
    // Cut on both sides: the client's connection closes, and the upstream's (it sees a reset
    // when it writes to it).
    await until(() => closed, 'the client connection closed by the proxy')
    const upstreamSocket = up.sockets[0] as Socket
    const reset = new Promise((resolve) => upstreamSocket.once('error', resolve))
    const write = (): void => {
      if (!upstreamSocket.destroyed) upstreamSocket.write('x', () => setTimeout(write, 10))
    }
    write()
    await reset
  })
})
