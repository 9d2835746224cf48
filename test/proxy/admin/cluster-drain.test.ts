// Draining the workers (SIGTERM to the primary) while a worker is still starting: a restarted
// worker that has not come up yet does not listen for commands, so a `drain` request sent to it
// was lost and the primary waited the whole command timeout for its answer, and then for a
// worker that never drained. A worker not up yet is sent SIGTERM instead (a worker drains on
// it, and one still starting stops as soon as it is up). The workers are in-memory fakes.

import { describe, expect, it } from 'vitest'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { asWorker, settle, twoWorkerBackend } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

describe('cluster backend: drain', () => {
  it('asks the workers that are up to drain and signals the one still starting', async () => {
    const backend = twoWorkerBackend()
    const up = new FakeWorker(1, { answering: true })
    backend.attach(asWorker(up))
    up.start()
    // A replacement that asked for its config and is binding its listeners: it answers nothing.
    const starting = new FakeWorker(2)
    backend.attach(asWorker(starting))
    starting.emit('message', { bw: 'starting' })
    let drained = false
    void backend.drainAll().then(() => {
      drained = true
    })
    await settle()
    expect(drained).toBe(true)
    expect(up.commands()).toEqual([{ op: 'drain' }])
    expect(up.signals).toEqual([])
    expect(starting.commands()).toEqual([])
    expect(starting.signals).toEqual(['SIGTERM'])
    expect(backend.ready()).toBe(false)
  })

  it('signals a worker being replaced only once: a second SIGTERM would force its stop', async () => {
    const backend = twoWorkerBackend()
    const applying = new FakeWorker(1, { answering: true })
    const refusing = new FakeWorker(2, {
      answering: true,
      refusing: (command) => (command.op === 'reload' ? 'cannot bind' : undefined),
    })
    for (const worker of [applying, refusing]) {
      backend.attach(asWorker(worker))
      worker.start()
    }
    await expect(backend.reload()).rejects.toBeInstanceOf(PartiallyAppliedError)
    expect(refusing.signals).toEqual(['SIGTERM'])
    await backend.drainAll()
    expect(refusing.signals).toEqual(['SIGTERM'])
    expect(applying.commands().at(-1)).toEqual({ op: 'drain' })
  })
})
