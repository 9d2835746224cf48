// readMs and the time spent sending a request body. Exploratory testing found a 10 MB PUT to
// an upstream that read it slowly but steadily failing with 504 UPSTREAM_TIMEOUT after every
// attempt (each counted against the upstream): readMs was started as the request was handed to
// the socket, and writing the body never pushed it back. readMs now bounds the gap between
// write progress while the body is sent, and the time to the response head from its end.
// Timeouts run on a ManualClock; the upstream here reads only when the test says so.
import { createServer, type Socket } from 'node:net'
import { describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { eventually, serviceConfig, startFront, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups } = useUpstreamTest()

/** An upstream that holds its side paused and reads a request body only when asked. */
interface SlowReader {
  readonly url: string
  /** Bytes received so far (head and body). */
  received(): number
  /** Reads at least `bytes` more, then pauses again. */
  read(bytes: number): Promise<void>
  /** Reads everything from now on. */
  readAll(): void
  /** Answers 200 `ok` on the connection. */
  answer(): void
}

async function slowReader(): Promise<SlowReader> {
  let socket: Socket | undefined
  const sockets: Socket[] = []
  let received = 0
  let wanted = 0
  let woken: (() => void) | undefined
  const server = createServer((accepted) => {
    socket = accepted
    sockets.push(accepted)
    accepted.on('error', () => {})
    accepted.on('data', (chunk: Buffer) => {
      received += chunk.length
      if (received >= wanted) {
        accepted.pause()
        woken?.()
      }
    })
  })
  const port = await listenOnLoopback(server)
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const each of sockets) each.destroy()
        server.close(() => resolve())
      }),
  )
  return {
    url: `http://127.0.0.1:${port}`,
    received: () => received,
    read: (bytes) =>
      new Promise<void>((resolve) => {
        wanted = received + bytes
        woken = resolve
        socket?.resume()
      }),
    readAll: () => {
      wanted = Number.POSITIVE_INFINITY
      socket?.resume()
    },
    answer: () => {
      socket?.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
    },
  }
}

// Larger than what the loopback socket buffers hold while the upstream does not read (the
// kernel takes more once the reader freed a good part of them: the steady reader reads 4 MiB
// at a time).
const smallBody = 16 * 1024 * 1024
const bigBody = 48 * 1024 * 1024
// Time for the proxy's socket to see the progress the upstream's read made (real time: socket
// events, not a timeout under test).
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 50))

async function setup(readMs: number, bodyBytes: number, retry = false) {
  const clock = new ManualClock(1_000_000)
  const deps = testDeps(clock)
  const up = await slowReader()
  const base = serviceConfig([up.url])
  const service = createServiceRuntime(
    {
      ...base,
      timeouts: { connectMs: 1_000, readMs, overallMs: 600_000 },
      retry: retry ? base.retry : undefined,
    },
    deps,
    { random: () => 0.5 },
  )
  cleanups.push(() => service.close())
  const front = await startFront(service, clock)
  cleanups.push(() => front.close())
  const response = fetch(`${front.url}/upload`, {
    method: 'PUT',
    body: Buffer.alloc(bodyBytes, 120),
  }).then(async (r) => ({ status: r.status, body: await r.text() }))
  await eventually(() => front.forwarded.length === 1)
  await eventually(() => up.received() > 0)
  await settle()
  return { clock, up, front, response }
}

describe('readMs while the request body is sent', () => {
  it('does not time out an upstream that reads the body slowly but steadily', async () => {
    const { clock, up, front, response } = await setup(2_000, bigBody, true)
    // 2 s between progress each time; far more than readMs in all.
    for (let step = 0; step < 6; step++) {
      await clock.advance(1_000)
      await up.read(4 * 1024 * 1024)
      await settle()
    }
    expect(front.outcomes).toHaveLength(0)
    up.readAll()
    await eventually(() => up.received() > bigBody)
    up.answer()
    expect(await response).toEqual({ status: 200, body: 'ok' })
    expect(front.outcomes[0]).toMatchObject({ status: 200, attempts: 1, error: undefined })
  })

  it('bounds a body write that makes no progress by readMs', async () => {
    const { clock, response } = await setup(2_000, smallBody)
    await clock.advance(1_999)
    await settle()
    await clock.advance(1)
    const answered = await response
    expect(answered.status).toBe(504)
    expect(answered.body).toContain('UPSTREAM_TIMEOUT')
  })

  it('starts readMs for the response head once the whole body is sent', async () => {
    const { clock, up, front, response } = await setup(2_000, smallBody)
    await clock.advance(1_500)
    up.readAll()
    await eventually(() => up.received() > smallBody)
    await settle()
    // 3.4 s since the request was handed over, 1.9 s since its body was all sent.
    await clock.advance(1_900)
    await settle()
    expect(front.outcomes).toHaveLength(0)
    await clock.advance(100)
    const answered = await response
    expect(answered.status).toBe(504)
    expect(answered.body).toContain('UPSTREAM_TIMEOUT')
  })
})
