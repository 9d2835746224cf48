// A worker that exits while the primary waits for its answer (it crashed in the middle of a
// reload or an admin command): the command used to wait the whole command timeout (10 s) for
// an answer that could not come, holding the admin call and every reload queued behind it. It
// now fails for that worker as soon as the primary forgets it. The workers are in-memory fakes.

import { describe, expect, it } from 'vitest'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { asWorker, settle, twoWorkerBackend } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

describe('cluster backend: a worker that exits before it answers', () => {
  it('fails the command for that worker at once instead of at the timeout', async () => {
    const backend = twoWorkerBackend()
    const answering = new FakeWorker(1, { answering: true })
    const crashing = new FakeWorker(2)
    for (const worker of [answering, crashing]) {
      backend.attach(asWorker(worker))
      worker.start()
    }
    let outcome: unknown
    void backend.isolate('orders').then(
      () => {
        outcome = 'done'
      },
      (error: unknown) => {
        outcome = error
      },
    )
    await settle()
    expect(outcome).toBeUndefined()
    crashing.exit(null, 'SIGKILL')
    backend.detach(asWorker(crashing))
    await settle()
    expect(outcome).toBeInstanceOf(PartiallyAppliedError)
    expect((outcome as PartiallyAppliedError).failed).toEqual([
      { pid: 1002, error: 'worker 1002 exited before it answered isolate' },
    ])
  })
})
