// A command handler whose process dies mid-command (here: its connection is terminated while
// decide runs, which is what the database sees of a SIGKILL) must not hold the command id for
// idempotency.leaseMs: a saga step retrying the same commandId would get IDEMPOTENCY_IN_PROGRESS
// for every attempt and compensate a command that would have succeeded. With
// idempotency.claim: 'in-transaction' the claim is the first statement of the command's own
// transaction, so the crash rolls it back and the retry runs at once.
import { describe, expect, it } from 'vitest'
import { createCommandHandler, createEventStore } from '../../src/cqrs/index.js'
import { type AccountCommand, account } from './accounts.js'
import { dbTargets, postgresDb, useTestDb } from './databases.js'

describe.each(dbTargets)('command idempotency claim option on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_claim_option', { idempotency: true })

  it("takes claim: 'in-transaction' and replays a repeat", async () => {
    const accounts = createCommandHandler(createEventStore(t.db), {
      decider: account,
      idempotency: { claim: 'in-transaction' },
    })
    const first = await accounts.handle(
      'acct-1',
      { kind: 'open', owner: 'ada' },
      { commandId: 'c1' },
    )
    const again = await accounts.handle(
      'acct-1',
      { kind: 'open', owner: 'ada' },
      { commandId: 'c1' },
    )
    expect(first.replayed).toBe(false)
    expect(again).toMatchObject({ replayed: true, version: first.version })
  })

  it('refuses another claim value', () => {
    expect(() =>
      createCommandHandler(createEventStore(t.db), {
        decider: account,
        idempotency: { claim: 'eventually' as never },
      }),
    ).toThrow(expect.objectContaining({ code: 'INVALID_OPTION', option: 'idempotency.claim' }))
  })
})

describe('a command whose process dies mid-decide, on postgres', () => {
  const t = useTestDb(postgresDb, 'cqrs_claim_crash', { idempotency: true })

  it("with claim: 'in-transaction' frees its command id at once", async () => {
    const doomed = await t.connect()
    let entered!: () => void
    const deciding = new Promise<void>((resolve) => (entered = resolve))
    let finish!: () => void
    const hang = new Promise<void>((resolve) => (finish = resolve))
    const crashing = createCommandHandler(createEventStore(doomed), {
      decider: {
        ...account,
        decide: async (command: AccountCommand, state) => {
          entered()
          await hang
          return account.decide(command, state)
        },
      },
      idempotency: { claim: 'in-transaction' },
      maxAttempts: 1,
    })
    const command: AccountCommand = { kind: 'open', owner: 'bob' }
    const crashed = crashing.handle('acct-crash', command, { commandId: 'cmd-crash' })
    crashed.catch(() => {})
    await deciding
    // What the database sees of a killed process: its connection goes, its transaction rolls back.
    const killed = await t.db.query<{ n: number }>(
      `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
       WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()`,
    )
    expect(killed[0]!.n).toBe(1)
    const accounts = createCommandHandler(createEventStore(t.db), {
      decider: account,
      idempotency: { claim: 'in-transaction' },
    })
    const retried = await accounts.handle('acct-crash', command, { commandId: 'cmd-crash' })
    expect(retried).toMatchObject({ replayed: false, version: 1 })
    finish()
    await expect(crashed).rejects.toBeDefined()
  })
})
