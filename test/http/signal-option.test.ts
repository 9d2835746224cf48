// client.request(service, { signal }) and service.execute(fn, { signal }) refuse a signal that
// is not an AbortSignal with INVALID_OPTION naming it, before anything is sent: it would
// otherwise fail deep inside the policies with a bare TypeError. No server: nothing may be sent.
import { afterAll, describe, expect, it } from 'vitest'
import { createHttpClient } from '../../src/http/index.js'

const notSignals: readonly unknown[] = ['abort', {}, { aborted: false }, null]

describe('http: a signal that is not an AbortSignal', () => {
  // A loopback port nobody listens on: a request that went out would fail with ECONNREFUSED.
  const client = createHttpClient({ services: { svc: { baseUrl: 'http://127.0.0.1:9' } } })
  afterAll(() => client.close())

  it('is refused by request() as request.signal', async () => {
    for (const signal of notSignals) {
      await expect(
        client.request('svc', { path: '/x', signal: signal as AbortSignal }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'request.signal' })
    }
  })

  it('is refused by execute() as execute.signal, without running fn', async () => {
    let runs = 0
    for (const signal of notSignals) {
      await expect(
        client.service('svc').execute(() => ++runs, { signal: signal as AbortSignal }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'execute.signal' })
    }
    expect(runs).toBe(0)
  })
})
