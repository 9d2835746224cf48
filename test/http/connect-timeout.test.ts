import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import type { Socket } from 'node:net'
import { errors } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpClient } from '../../src/http/index.js'
import { withDeadline } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { startSilentServer } from '../support/silent-server.js'
import { track } from '../support/track.js'
import { unacceptingListener } from '../support/unaccepting-listener.js'
import { closedPort, startServer, until } from './servers.js'

// connectTimeoutMs runs on the service's clock, as the headers and body timeouts do: undici's
// own connect timer ticks every half second, so a 100 ms limit fired after about a second.
// Every test here drives a ManualClock; real time is spent only on the sockets themselves.

const cleanup: Array<() => void | Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

/** The client sockets node:net opens from now on (undici opens plain ones with net.connect). */
function watchSockets(): Socket[] {
  const sockets: Socket[] = []
  const onSocket = (message: unknown) => sockets.push((message as { socket: Socket }).socket)
  subscribe('net.client.socket', onSocket)
  cleanup.push(() => {
    unsubscribe('net.client.socket', onSocket)
  })
  return sockets
}

function clientOn(baseUrl: string, clock: ManualClock, connectTimeoutMs: number): HttpClient {
  const client = createHttpClient({
    clock,
    services: { svc: { baseUrl, retry: false, connectTimeoutMs } },
  })
  cleanup.push(() => client.service('svc').dispatcher.destroy())
  return client
}

/**
 * A call to a listener that never completes a handshake, on a client whose connectTimeoutMs is
 * `connectTimeoutMs` (300 unless given) on a ManualClock, once its connect is under way (its
 * SYN unanswered, its timer armed).
 */
async function hangingConnect(
  run: (client: HttpClient, clock: ManualClock) => Promise<unknown>,
  connectTimeoutMs = 300,
) {
  const listener = await unacceptingListener()
  cleanup.push(() => listener.stop())
  const sockets = watchSockets()
  const clock = new ManualClock()
  const client = clientOn(`http://127.0.0.1:${listener.port}`, clock, connectTimeoutMs)
  const call = track(run(client, clock))
  await until(() => sockets.length === 1)
  return { port: listener.port, clock, client, call, socket: sockets[0]! }
}

describe('connectTimeoutMs', () => {
  it("fails a connect that hangs when connectTimeoutMs has passed on the service's clock, with undici's ConnectTimeoutError, and closes its socket", async () => {
    const { port, clock, call, socket } = await hangingConnect((client) =>
      client.request('svc', { path: '/' }),
    )
    await clock.advance(299)
    expect(call.settled).toBe(false)
    expect(socket.destroyed).toBe(false)
    await clock.advance(1)
    expect(call.settled).toBe(true)
    expect(call.error).toBeInstanceOf(errors.ConnectTimeoutError)
    expect((call.error as { code?: string }).code).toBe('UND_ERR_CONNECT_TIMEOUT')
    expect((call.error as Error).message).toBe(
      `Connect Timeout Error (attempted address: 127.0.0.1:${port}, timeout: 300ms)`,
    )
    expect(socket.destroyed).toBe(true)
    expect(clock.pendingTimers).toBe(0)
  })

  it('counts the TLS handshake in the connect: a server that accepts and never answers it times out alike', async () => {
    const server = await startSilentServer()
    cleanup.push(() => server.close())
    const clock = new ManualClock()
    const client = clientOn(`https://127.0.0.1:${server.port}`, clock, 300)
    const call = track(client.request('svc', { path: '/' }))
    const accepted = await server.firstConnection
    // Read (and drop) its ClientHello, so that its end is seen once the client goes.
    accepted.resume()
    const closed = new Promise<void>((resolve) => accepted.once('close', () => resolve()))
    await clock.advance(299)
    expect(call.settled).toBe(false)
    await clock.advance(1)
    expect(call.settled).toBe(true)
    expect((call.error as { code?: string }).code).toBe('UND_ERR_CONNECT_TIMEOUT')
    // The client's end is destroyed: the server sees the connection go.
    await closed
    expect(clock.pendingTimers).toBe(0)
  })

  it('lets a deadline shorter than connectTimeoutMs end the call first; the connect still gives up at connectTimeoutMs, its socket closed', async () => {
    const { clock, client, call, socket } = await hangingConnect((client, clock) =>
      withDeadline(100, () => client.request('svc', { path: '/' }), { clock }),
    )
    await clock.advance(100)
    expect(call.settled).toBe(true)
    expect((call.error as { code?: string }).code).toBe('DEADLINE_EXCEEDED')
    // The connection could still serve a later request: undici goes on opening it.
    expect(socket.destroyed).toBe(false)
    await clock.advance(200)
    expect(socket.destroyed).toBe(true)
    // undici failed the request it held for that connection: nothing is left in the pool.
    expect(client.service('svc').state().pool.size).toBe(0)
    expect(clock.pendingTimers).toBe(0)
  })

  it.each([300, Number.POSITIVE_INFINITY])(
    'close() (connectTimeoutMs %s) ends a connect the call stopped waiting for: its socket destroyed, its timer cleared',
    async (connectTimeoutMs) => {
      const { clock, client, call, socket } = await hangingConnect(
        (client, clock) => withDeadline(100, () => client.request('svc', { path: '/' }), { clock }),
        connectTimeoutMs,
      )
      await clock.advance(100)
      expect((call.error as { code?: string }).code).toBe('DEADLINE_EXCEEDED')
      expect(socket.destroyed).toBe(false)
      // The clock stands still from here: only close() can end the connect.
      await client.close()
      expect(socket.destroyed).toBe(true)
      expect(clock.pendingTimers).toBe(0)
      expect(client.service('svc').state().pool.size).toBe(0)
    },
  )

  it('clears its timer once connected: a connection outliving connectTimeoutMs is reused', async () => {
    const server = await startServer((_req, res) => {
      res.end('ok')
    })
    cleanup.push(() => server.close())
    const clock = new ManualClock()
    const client = clientOn(server.url, clock, 300)
    expect((await client.request('svc', { path: '/' })).status).toBe(200)
    expect(clock.pendingTimers).toBe(0)
    await clock.advance(1_000)
    expect((await client.request('svc', { path: '/' })).status).toBe(200)
    expect(server.connections()).toBe(1)
  })

  it('clears its timer when the connect fails (refused)', async () => {
    const clock = new ManualClock()
    const client = clientOn(`http://127.0.0.1:${await closedPort()}`, clock, 300)
    const error = await client.request('svc', { path: '/' }).catch((e: unknown) => e)
    expect((error as { code?: string }).code).toBe('ECONNREFUSED')
    expect(clock.pendingTimers).toBe(0)
  })
})
