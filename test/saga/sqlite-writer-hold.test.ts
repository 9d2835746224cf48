// SQLite has one writer. A step's own transaction (its atCommit work, a reply step's send) holds
// it while that work runs, and every other write waits meanwhile: the worker's periodic renewal
// of the other instances it runs, and another worker's claim. A claim used to judge which leases
// had run out at the time it got the writer, so a claim that had queued behind such a hold,
// while the leases were still live, took over every instance whose lease ran out during the
// hold only because its owner's renewal was queued behind the same writer: the step then ran on
// both workers at once. Driven by a ManualClock on a real SQLite file, two workers each with
// their own connection (as two processes would have).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, getSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { until } from '../support/until.js'
import { sqliteDb, type TestDb } from './databases.js'

// Lets queued promise jobs and I/O callbacks run: a statement reaches its wait.
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

interface HoldCase {
  readonly leaseMs: number
  readonly renewIntervalMs: number
  /** When the other worker asks for its claim, during the hold. */
  readonly claimAt: number
  /** How long the slow step transaction holds the writer, from 0. */
  readonly holdMs: number
}

describe("a slow step transaction holding SQLite's one writer", () => {
  let t: TestDb

  beforeAll(async () => {
    t = await sqliteDb.open('saga_writer_hold')
  })
  afterAll(async () => {
    await t?.close()
  })

  /**
   * Worker A runs a held step of instance `y`, then a step of another instance whose atCommit
   * work holds the writer for `holdMs`; worker B (its own connection) asks for a claim at
   * `claimAt` during the hold. Resolves to who holds `y` once the hold is over, and how many
   * times its step started.
   */
  async function hold(c: HoldCase): Promise<{ owner: string | undefined; starts: number }> {
    const clock = new ManualClock(0)
    const suffix = randomUUID().slice(0, 8)
    let starts = 0
    const held = gate()
    const reached = gate()
    const y = defineSaga({
      name: `held-${suffix}`,
      version: 1,
      steps: [
        {
          name: 'held',
          action: async () => {
            starts++
            reached.open()
            await held.promise
          },
        },
      ],
    })
    const inTransaction = gate()
    const committed = gate()
    const x = defineSaga({
      name: `slow-commit-${suffix}`,
      version: 1,
      steps: [
        {
          name: 'slow-commit',
          action: async (ctx) => {
            // A slow local write (a lock wait, a large statement): the writer is held meanwhile.
            ctx.atCommit(async () => {
              inTransaction.open()
              await committed.promise
            })
          },
        },
      ],
    })
    const options = { sagas: [y, x], clock, leaseMs: c.leaseMs, renewIntervalMs: c.renewIntervalMs }
    const a = createSagaWorker({ ...options, db: t.db, workerId: 'A' })
    const b = createSagaWorker({ ...options, db: await t.reopen(), workerId: 'B' })
    const yId = `y-${suffix}`
    const yRun = a.run(y, {}, { id: yId })
    await reached.promise
    let polled: Promise<number> | undefined
    let xRun: Promise<unknown> | undefined
    try {
      xRun = a.run(x, {}, { id: `x-${suffix}` })
      await inTransaction.promise
      await clock.advance(c.claimAt)
      polled = b.poll()
      await turn()
      await clock.advance(c.holdMs - c.claimAt)
      committed.open()
      await xRun
      // A's renewal (queued behind the hold since its timer fired) and B's claim have both run.
      await until(
        async () => (await getSaga(t.db, yId))!.leaseExpiresAt! > c.holdMs,
        "y's lease to be written after the hold",
      )
      return { owner: (await getSaga(t.db, yId))!.leaseOwner, starts }
    } finally {
      committed.open()
      held.open()
      await Promise.allSettled([yRun, xRun, polled])
      await a.stop()
      await b.stop()
    }
  }

  it('leaves a worker its instances when a claim queued behind the hold while their leases were live', async () => {
    // y's lease (0 + 1000) runs out at 1000, during the hold; A's renewal (at 300) and B's claim
    // (at 100) both wait for the writer until 1500. Before: B's claim judged y's lease at 1500,
    // took y over and started its step a second time while A was still running it.
    expect(
      await hold({ leaseMs: 1_000, renewIntervalMs: 300, claimAt: 100, holdMs: 1_500 }),
    ).toEqual({
      owner: 'A',
      starts: 1,
    })
  })

  it('can lose an instance when the hold outlasts leaseMs - renewIntervalMs (the documented bound)', async () => {
    // B asks at 1200, after y's lease ran out at 1000: its renewal has been queued since 300.
    const bound = { renewIntervalMs: 300, claimAt: 1_200, holdMs: 1_500 }
    // 1500 > 1000 - 300: B's claim gets the writer first and takes y over.
    expect((await hold({ ...bound, leaseMs: 1_000 })).owner).toBe('B')
    // The mitigation: leaseMs - renewIntervalMs above the longest hold (2000 - 300 > 1500).
    expect(await hold({ ...bound, leaseMs: 2_000 })).toEqual({ owner: 'A', starts: 1 })
  })
})
