// How soon the primary replaces a worker that exited: a worker that crashed while serving is
// replaced after 500 ms, but one that keeps failing to start (its idempotency store down, a TLS
// file gone) used to be restarted every 500 ms for ever, each time forking a whole Node
// process; the delay now doubles for each worker in a row that exited before it came up, up
// to 30 s, and starts over once one comes up.

import { describe, expect, it } from 'vitest'
import { RestartBackoff } from '../../../src/proxy/admin/cluster.js'
import { asWorker, twoWorkerBackend } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

describe('worker restart delay', () => {
  it('doubles for each worker in a row that did not come up, and starts over when one did', () => {
    const backoff = new RestartBackoff()
    expect(backoff.next(true)).toBe(500)
    expect([1, 2, 3, 4, 5, 6, 7, 8].map(() => backoff.next(false))).toEqual([
      500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000,
    ])
    expect(backoff.next(true)).toBe(500)
    expect(backoff.next(false)).toBe(500)
    expect(backoff.next(false)).toBe(1_000)
  })

  it('refuses bad delays', () => {
    expect(() => new RestartBackoff({ firstDelayMs: 0 })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'firstDelayMs' }),
    )
    expect(() => new RestartBackoff({ firstDelayMs: 1_000, maxDelayMs: 999 })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'maxDelayMs' }),
    )
  })

  it('the backend says whether a worker it forgets had come up', () => {
    const backend = twoWorkerBackend()
    const served = new FakeWorker(1, { answering: true })
    backend.attach(asWorker(served))
    served.start()
    const neverUp = new FakeWorker(2, { answering: true })
    backend.attach(asWorker(neverUp))
    neverUp.emit('message', { bw: 'starting' })
    expect(backend.detach(asWorker(served))).toBe(true)
    expect(backend.detach(asWorker(neverUp))).toBe(false)
    expect(backend.detach(asWorker(neverUp))).toBe(false)
  })
})
