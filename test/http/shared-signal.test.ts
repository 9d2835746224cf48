// One caller's AbortSignal shared by a fan-out of concurrent requests: Node warns
// (MaxListenersExceededWarning) once more than 10 listeners wait on one signal, so the client
// must not add one per call, and must leave none behind when the calls settle.
import { getEventListeners } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpClient } from '../../src/http/index.js'
import { Gate, startServer, type TestServer, until } from './servers.js'

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function warningsDuring(run: () => Promise<void>): Promise<string[]> {
  const warnings: string[] = []
  const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`)
  process.on('warning', onWarning)
  try {
    await run()
    // process.emitWarning reports on the next tick.
    await new Promise((resolve) => setImmediate(resolve))
  } finally {
    process.off('warning', onWarning)
  }
  return warnings
}

describe('http: one caller signal shared by many concurrent calls', () => {
  async function setUp(): Promise<{ server: TestServer; gate: Gate; client: HttpClient }> {
    const gate = new Gate()
    const server = await startServer(async (_req, res) => {
      await gate.wait()
      res.end('ok')
    })
    cleanup.push(() => server.close())
    const client = createHttpClient({ services: { svc: { baseUrl: server.url } } })
    cleanup.push(() => client.close())
    // A failed assertion must not leave the calls hanging on the server.
    cleanup.push(async () => gate.open())
    return { server, gate, client }
  }

  it('prints no warning and leaves no listener once the calls settle', async () => {
    const { server, gate, client } = await setUp()
    const signal = new AbortController().signal
    const warnings = await warningsDuring(async () => {
      const calls = Array.from({ length: 30 }, () =>
        client.request('svc', { path: '/', signal }).catch((e: unknown) => e),
      )
      await until(() => server.hits.length === 30)
      // However many calls wait on it, the signal has at most one listener of the client's.
      expect(getEventListeners(signal, 'abort').length).toBeLessThanOrEqual(1)
      gate.open()
      const responses = await Promise.all(calls)
      expect(responses.map((r) => (r as { status?: number }).status)).toEqual(Array(30).fill(200))
    })
    expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([])
    expect(getEventListeners(signal, 'abort')).toHaveLength(0)
  })

  it('still aborts every call when the shared signal aborts', async () => {
    const { server, gate, client } = await setUp()
    const controller = new AbortController()
    const signal = controller.signal
    const calls = Array.from({ length: 20 }, () =>
      client.request('svc', { path: '/', signal }).catch((e: unknown) => e),
    )
    await until(() => server.hits.length === 20)
    controller.abort(new Error('enough'))
    const errors = await Promise.all(calls)
    expect(errors.every((e) => (e as { code?: string }).code === 'ABORTED')).toBe(true)
    gate.open()
    expect(getEventListeners(signal, 'abort')).toHaveLength(0)
  })
})
