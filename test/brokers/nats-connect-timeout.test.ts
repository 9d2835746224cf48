// A NATS connect that times out because the peer accepted the TCP connection and never sent
// its INFO line (a hung server, something else on the port). nats.js gives up after the
// timeout but leaves that socket open (its transport's close() ignores a transport that never
// connected), so a publisher retrying against such a peer left one open socket per attempt.
// The peer here is a plain TCP server that accepts and says nothing: a hung peer, not a NATS
// stand-in (nothing of the protocol is faked).
import { createServer, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { until } from '../support/until.js'
import { makeBatch, unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'

let silent: { server: Server; open: Set<Socket> } | undefined
afterEach(async () => {
  const peer = silent
  silent = undefined
  if (peer === undefined) return
  // server.close() waits for its connections: a leaked one would hold it for good.
  for (const socket of peer.open) socket.destroy()
  await new Promise((resolve) => peer.server.close(resolve))
})

/** A server that accepts connections and never writes; `open` holds those still open. */
async function silentPeer(): Promise<{ url: string; open: Set<Socket>; accepted: () => number }> {
  const open = new Set<Socket>()
  let accepted = 0
  const server = createServer((socket) => {
    accepted++
    open.add(socket)
    socket.on('close', () => open.delete(socket))
    socket.on('error', () => {})
  })
  silent = { server, open }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return { url: `nats://127.0.0.1:${address.port}`, open, accepted: () => accepted }
}

describe('NATS connect to a peer that never answers', () => {
  it('closes the socket of every timed-out attempt (publisher and subscriber)', async () => {
    const peer = await silentPeer()
    const broker = createNatsBroker({ url: peer.url, connectTimeoutMs: 200 })
    try {
      const topic = unique('nats-silent')
      for (let i = 0; i < 5; i++) {
        const error = await rejectionOf(broker.publisher.publish(makeBatch(topic, 1, 1)))
        expectBrokerError(error, 'BROKER_UNAVAILABLE', true)
      }
      const error = await rejectionOf(broker.subscriber.subscribe(topic, 'g', async () => {}))
      expectBrokerError(error, 'BROKER_UNAVAILABLE', true)
    } finally {
      await broker.close()
    }
    expect(peer.accepted()).toBeGreaterThanOrEqual(6)
    await until(() => peer.open.size === 0, 'every timed-out connection to close')
  })
})
