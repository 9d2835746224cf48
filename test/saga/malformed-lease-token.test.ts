// A claimed instance whose state cannot be read is reported and held for a minute, fenced by the
// lease token the claim returned (holdUnreadable). The worker read that token with Number() and
// said nothing about it: a token changed outside breakwater to one no claim gives (a negative
// one, a fraction on SQLite) went unreported, though `saga show` refuses it, and one past 2^53
// is read rounded, so the hold matched nothing and the instance was claimed and reported again
// at every lease with no word on why. The token is now read as a stored number: one that is not
// a whole number from 0 is reported too (naming the saga and `lease_token`), the hold is fenced
// by the number the claim returned when there is one, and the row is left as it is. Real SQLite
// and PostgreSQL; time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaDefinition,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const tokenText = 'not a fencing token (a whole number from 0)'
const maxBigint = '9223372036854775807'

describe.each(dbTargets)('an instance with a malformed lease_token, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_malformed_lease_token')
  })
  afterAll(async () => {
    await t?.close()
  })

  // A worker running `saga`, the events it emits and the messages of its errors for `sagaId`.
  const watch = (saga: SagaDefinition<unknown, unknown>, clock: ManualClock, sagaId: string) => {
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const reports = () =>
      events.flatMap((e) => (e.type === 'error' && e.sagaId === sagaId ? [e.error?.message] : []))
    return { worker, events, reports }
  }

  // [stored token, the token the claim returns as read, whether the hold can be fenced by it]
  it.each([
    [-5, '-4', true],
    // 2^60 + 1: the claim makes it 2^60 + 2, read as 2^60 (the nearest double, which
    // JavaScript prints as 1152921504606847000).
    ['1152921504606846977', '1152921504606847000', false],
    ...(target.dialect === 'sqlite'
      ? ([
          [1.5, '2.5', true],
          // The claim's lease_token + 1 turns text into 1: a token like any other.
          ['abc', undefined, true],
        ] as const)
      : []),
  ] as const)(
    'lease_token %s: reported with the state, the row left as it is',
    async (bad, shown, held) => {
      const clock = new ManualClock(1_700_000_000_000)
      const ran: string[] = []
      const saga = defineSaga({
        name: `token-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [{ name: 'a', action: async () => void ran.push('a') }],
      })
      const broken = (await startSaga(t.db, saga, {}, { clock })).id
      await t.db.execute('UPDATE breakwater_sagas SET steps = $1, lease_token = $2 WHERE id = $3', [
        '{bad',
        bad,
        broken,
      ])
      const { worker, events, reports } = watch(saga, clock, broken)
      const place = `breakwater_sagas saga "${broken}"`
      const expected = [
        expect.stringContaining(`${place}: steps is not JSON`),
        ...(shown === undefined
          ? []
          : [
              `${place}: lease_token is ${shown}, ${tokenText}; the row was changed outside breakwater and is left as it is`,
            ]),
      ]
      try {
        await worker.poll()
        expect(reports()).toEqual(expected)
        expect(events.filter((e) => e.type === 'error')).toHaveLength(expected.length)
        if (held) {
          // Held for a minute, not claimed (and reported) again at every lease.
          await clock.advance(59_999)
          await worker.poll()
          expect(reports()).toHaveLength(expected.length)
          await clock.advance(1)
        } else {
          // The hold, fenced by a rounded token, matches nothing: claimed again once the lease
          // (800 ms) runs out, and reported again, each time naming the token.
          await clock.advance(800)
        }
        await worker.poll()
        expect(reports()).toHaveLength(2 * expected.length)
      } finally {
        await worker.stop()
      }
      expect(ran).toEqual([])
      const [row] = await t.db.query<{ steps: string; status: string }>(
        'SELECT steps, status FROM breakwater_sagas WHERE id = $1',
        [broken],
      )
      expect(row).toEqual({ steps: '{bad', status: 'running' })
      await expect(getSaga(t.db, broken)).rejects.toBeInstanceOf(StoredDataError)
    },
  )

  // A claimed instance whose state can be read was run with Number(lease_token): one past 2^53,
  // read rounded, fenced every write of the run with a token the row does not hold, so the step
  // ran, its write was refused (reported only as a lost lease) and it ran again at every lease;
  // a negative one or a fraction ran as if breakwater had written it. Now it is not run: reported
  // naming the saga and `lease_token`, held when the token read can fence the hold, the row left
  // as it is. And PostgreSQL's BIGINT maximum made the claim's `lease_token + 1` (and INTEGER's
  // maximum its `attempt + 1`) fail the whole claim, so one such row stopped every other instance
  // from being claimed: the claim now leaves a column at its maximum as it is.
  const oneStep = (ran: string[]) =>
    defineSaga({
      name: `claimed-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async ({ sagaId }) => void ran.push(sagaId) }],
    })

  // [stored token, the token the claim returns as read, whether the hold can be fenced by it]
  it.each([
    [-5, '-4', true],
    ['1152921504606846977', '1152921504606847000', false],
    ...(target.dialect === 'sqlite' ? ([[1.5, '2.5', true]] as const) : []),
  ] as const)(
    'lease_token %s: not run, reported, the row left as it is',
    async (bad, shown, held) => {
      const clock = new ManualClock(1_700_000_000_000)
      const ran: string[] = []
      const saga = oneStep(ran)
      const broken = (await startSaga(t.db, saga, {}, { clock })).id
      await t.db.execute('UPDATE breakwater_sagas SET lease_token = $1 WHERE id = $2', [
        bad,
        broken,
      ])
      const { worker, events, reports } = watch(saga, clock, broken)
      const message = `breakwater_sagas saga "${broken}": lease_token is ${shown}, ${tokenText}; the row was changed outside breakwater and is left as it is`
      try {
        await worker.poll()
        expect(reports()).toEqual([message])
        expect(events.filter((e) => e.type === 'error')).toHaveLength(1)
        expect(events.filter((e) => e.type === 'lease-lost' || e.type === 'step-started')).toEqual(
          [],
        )
        await clock.advance(held ? 60_000 : 800)
        await worker.poll()
        expect(reports()).toHaveLength(2)
      } finally {
        await worker.stop()
      }
      expect(ran).toEqual([])
      const [row] = await t.db.query<{ status: string; step_index: number; steps: string }>(
        'SELECT status, step_index, steps FROM breakwater_sagas WHERE id = $1',
        [broken],
      )
      expect(row).toMatchObject({ status: 'running', step_index: 0 })
      expect(JSON.parse(row!.steps)).toEqual([{ name: 'a', status: 'pending', attempts: 0 }])
    },
  )

  it(`a lease_token at the integer maximum (${maxBigint}) is reported; the others claimed with it run`, async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const ran: string[] = []
    const saga = oneStep(ran)
    const ids: string[] = []
    for (let i = 0; i < 3; i++) ids.push((await startSaga(t.db, saga, {}, { clock })).id)
    const broken = ids[1]!
    await t.db.execute(`UPDATE breakwater_sagas SET lease_token = ${maxBigint} WHERE id = $1`, [
      broken,
    ])
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    try {
      expect(await worker.poll()).toBe(3)
      await worker.poll()
    } finally {
      await worker.stop()
    }
    expect(ran.sort()).toEqual([ids[0], ids[2]].sort())
    for (const id of [ids[0]!, ids[2]!]) expect((await getSaga(t.db, id))?.status).toBe('completed')
    const reports = events.flatMap((e) =>
      e.type === 'error' ? [[e.sagaId, e.error?.message]] : [],
    )
    expect(reports).toEqual([
      [
        broken,
        `breakwater_sagas saga "${broken}": lease_token is 9223372036854776000, ${tokenText}; the row was changed outside breakwater and is left as it is`,
      ],
    ])
    const [row] = await t.db.query<{ token: string; status: string }>(
      'SELECT CAST(lease_token AS TEXT) AS token, status FROM breakwater_sagas WHERE id = $1',
      [broken],
    )
    expect(row).toEqual({ token: maxBigint, status: 'running' })
  })

  it('an attempt at the integer maximum does not stop the others claimed with it', async () => {
    const max = target.dialect === 'postgres' ? '2147483647' : maxBigint
    const clock = new ManualClock(1_700_000_000_000)
    const ran: string[] = []
    const saga = oneStep(ran)
    const ids: string[] = []
    for (let i = 0; i < 3; i++) ids.push((await startSaga(t.db, saga, {}, { clock })).id)
    await t.db.execute(`UPDATE breakwater_sagas SET attempt = ${max} WHERE id = $1`, [ids[1]])
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    try {
      expect(await worker.poll()).toBe(3)
    } finally {
      await worker.stop()
    }
    expect(ran).toContain(ids[0])
    expect(ran).toContain(ids[2])
    expect(ran).not.toContain(ids[1])
  })
})
