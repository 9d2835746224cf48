// A small bank-account domain shared by the cqrs tests and their child-process fixtures: a
// decider, a projection into a balances table whose updates are not idempotent (a double
// application or a skipped event shows), and the same fold computed directly from events.
import { type Decider, defineProjection, type ProjectionDefinition } from '../../src/cqrs/index.js'

export type AccountEvent =
  | { type: 'opened'; data: { owner: string } }
  | { type: 'deposited'; data: { amount: number } }
  | { type: 'withdrawn'; data: { amount: number } }

export type AccountCommand =
  | { kind: 'open'; owner: string }
  | { kind: 'deposit'; amount: number }
  | { kind: 'withdraw'; amount: number }

export interface Account {
  open: boolean
  balance: number
  events: number
}

export class InsufficientFunds extends Error {}

export const account: Decider<AccountCommand, AccountEvent, Account> = {
  initialState: () => ({ open: false, balance: 0, events: 0 }),
  evolve(state, event) {
    const events = state.events + 1
    switch (event.type) {
      case 'opened':
        return { ...state, open: true, events }
      case 'deposited':
        return { ...state, balance: state.balance + event.data.amount, events }
      case 'withdrawn':
        return { ...state, balance: state.balance - event.data.amount, events }
    }
  },
  decide(command, state) {
    if (command.kind === 'open') {
      return state.open ? [] : [{ type: 'opened', data: { owner: command.owner } }]
    }
    if (!state.open) throw new Error('account is not open')
    if (command.kind === 'deposit') return [{ type: 'deposited', data: { amount: command.amount } }]
    if (state.balance < command.amount) throw new InsufficientFunds('insufficient funds')
    return [{ type: 'withdrawn', data: { amount: command.amount } }]
  },
}

/** One row of the balances read model. */
export interface BalanceRow {
  account_id: string
  owner: string
  balance: number
  events: number
}

/** The balances projection under `name`, writing table `table`. */
export function balancesProjection(
  name: string,
  table: string,
): ProjectionDefinition<AccountEvent> {
  return defineProjection<AccountEvent>({
    name,
    tables: {
      [table]: (t) => [
        `CREATE TABLE ${t} (account_id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, events INTEGER NOT NULL)`,
        `CREATE INDEX ${t}_by_owner ON ${t} (owner)`,
      ],
    },
    async apply(event, { tx, table: physical }) {
      const t = physical(table)
      if (event.type === 'opened') {
        await tx.execute(
          // A second application counts twice instead of failing, so a checker sees it.
          `INSERT INTO ${t} (account_id, owner, balance, events) VALUES ($1, $2, 0, 1)
           ON CONFLICT (account_id) DO UPDATE SET events = ${t}.events + 1`,
          [event.stream, event.data.owner],
        )
        return
      }
      const delta = event.type === 'deposited' ? event.data.amount : -event.data.amount
      // Not idempotent on purpose: applying an event twice (or never) changes the row.
      await tx.execute(
        `UPDATE ${t} SET balance = balance + $2, events = events + 1 WHERE account_id = $1`,
        [event.stream, delta],
      )
    },
  })
}

/** The balances read model computed directly from the events, sorted by account. */
export function foldBalances(
  events: readonly { stream: string; type: string; data: unknown }[],
  streamPrefix = '',
): BalanceRow[] {
  const rows = new Map<string, BalanceRow>()
  for (const event of events) {
    if (!event.stream.startsWith(streamPrefix)) continue
    const e = event as AccountEvent & { stream: string }
    if (e.type === 'opened') {
      rows.set(e.stream, { account_id: e.stream, owner: e.data.owner, balance: 0, events: 1 })
      continue
    }
    const row = rows.get(e.stream)
    if (row === undefined) continue
    row.balance += e.type === 'deposited' ? e.data.amount : -e.data.amount
    row.events++
  }
  return [...rows.values()].sort((a, b) => (a.account_id < b.account_id ? -1 : 1))
}
