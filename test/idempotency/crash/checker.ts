// The crash test's history and its checker. The history is what the clients did and saw; the
// verdict comes from the DATABASE (the charges and the idempotency records), compared with the
// first successful response each client saw and with a final replay of every key.
import type { SqlExecutor } from '../../../src/stores/index.js'

/** A response as the clients keep it. */
export interface Reply {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: Buffer
}

/**
 * One step of the history, Jepsen style: an invocation, then its outcome: `ok` (a final
 * response), `fail` (certainly not executed: refused connection, 409, or a refusal), or `info`
 * (unknown: the connection broke after the request was sent, or a 5xx).
 */
export type HistoryEvent =
  | {
      readonly type: 'invoke'
      readonly op: number
      readonly key: string
      readonly generation: number
    }
  | {
      readonly type: 'ok' | 'fail' | 'info'
      readonly op: number
      readonly key: string
      readonly generation: number
      readonly reply?: Reply
      readonly error?: string
    }

/** Every request the clients sent and what became of it. */
export class History {
  readonly events: HistoryEvent[] = []
  #ops = 0

  /** Records an invocation; returns its op id. */
  invoke(key: string, generation: number): number {
    const op = ++this.#ops
    this.events.push({ type: 'invoke', op, key, generation })
    return op
  }

  /** Records the outcome of `op`. */
  complete(
    op: number,
    key: string,
    generation: number,
    type: 'ok' | 'fail' | 'info',
    detail: { readonly reply?: Reply; readonly error?: string },
  ): void {
    this.events.push({ type, op, key, generation, ...detail })
  }

  /** The first successful (2xx) response per key. */
  firstOk(): Map<string, Reply> {
    const first = new Map<string, Reply>()
    for (const event of this.events) {
      if (event.type === 'ok' && event.reply !== undefined && !first.has(event.key)) {
        first.set(event.key, event.reply)
      }
    }
    return first
  }

  /** Counts by outcome, and the keys that got an answer after an unknown outcome. */
  summary(): { invoke: number; ok: number; fail: number; info: number; recovered: number } {
    const counts = { invoke: 0, ok: 0, fail: 0, info: 0, recovered: 0 }
    const unknown = new Set<string>()
    for (const event of this.events) {
      counts[event.type]++
      if (event.type === 'info') unknown.add(event.key)
      if (event.type === 'ok' && unknown.delete(event.key)) counts.recovered++
    }
    return counts
  }
}

/** A charge row: the business effect. */
export interface ChargeRow {
  readonly id: string
  readonly requestKey: string
  readonly amount: number
}

/** An idempotency record as the checker needs it. */
export interface RecordRow {
  readonly key: string
  readonly state: string
  readonly attempt: number
  readonly status: number | null
  readonly body: Buffer | null
}

/** What the database holds after the run. */
export interface DatabaseState {
  readonly charges: readonly ChargeRow[]
  readonly records: readonly RecordRow[]
}

/** Reads the charges and the idempotency records. */
export async function readDatabaseState(db: SqlExecutor): Promise<DatabaseState> {
  const charges = await db.query<{ id: string; request_key: string; amount: number | string }>(
    'SELECT id, request_key, amount FROM charges',
  )
  const records = await db.query<{
    idem_key: string
    state: string
    attempt: number | string
    response_status: number | null
    response_body: Uint8Array | null
  }>('SELECT idem_key, state, attempt, response_status, response_body FROM breakwater_idempotency')
  return {
    charges: charges.map((c) => ({
      id: c.id,
      requestKey: c.request_key,
      amount: Number(c.amount),
    })),
    records: records.map((r) => ({
      key: r.idem_key,
      state: r.state,
      attempt: Number(r.attempt),
      status: r.response_status === null ? null : Number(r.response_status),
      body: r.response_body === null ? null : Buffer.from(r.response_body),
    })),
  }
}

/** A broken promise of the protocol, for one key. */
export interface Violation {
  readonly kind:
    | 'never-answered'
    | 'lost-effect'
    | 'duplicate-effect'
    | 'wrong-amount'
    | 'unexpected-effect'
    | 'unrecorded'
    | 'record-mismatch'
    | 'response-mismatch'
    | 'replay-mismatch'
  readonly key: string
  readonly detail: string
}

/** The checker's input: what was asked, what the clients saw, and what the database holds. */
export interface CheckInput {
  /** Every key sent, with the amount its request asked for. */
  readonly requests: ReadonlyMap<string, number>
  /** The first successful response the clients saw, per key. */
  readonly firstOk: ReadonlyMap<string, Reply>
  /** The response to one more send of each key after the run. */
  readonly replays: ReadonlyMap<string, Reply>
  readonly state: DatabaseState
}

interface ChargeBody {
  readonly chargeId?: unknown
  readonly amount?: unknown
}

function parseBody(body: Buffer | null): ChargeBody | undefined {
  if (body === null) return undefined
  try {
    const value: unknown = JSON.parse(body.toString('utf8'))
    return typeof value === 'object' && value !== null ? (value as ChargeBody) : undefined
  } catch {
    return undefined
  }
}

function describesCharge(body: Buffer | null, charge: ChargeRow): boolean {
  const parsed = parseBody(body)
  return parsed?.chargeId === charge.id && parsed.amount === charge.amount
}

const replayedHeaders = ['content-type', 'location'] as const

/**
 * Exactly once, judged from the database: per key exactly one charge, with the amount asked
 * for; a completed record whose stored response describes that charge; the first response
 * the client saw describes it too; and the final replay equals that first response byte for
 * byte (status, body, content-type, location) and says it is a replay.
 */
export function checkExactlyOnce(input: CheckInput): Violation[] {
  const violations: Violation[] = []
  const add = (kind: Violation['kind'], key: string, detail: string): void => {
    violations.push({ kind, key, detail })
  }
  const chargesByKey = new Map<string, ChargeRow[]>()
  for (const charge of input.state.charges) {
    if (!input.requests.has(charge.requestKey)) {
      add('unexpected-effect', charge.requestKey, `charge ${charge.id} for a key never sent`)
      continue
    }
    const list = chargesByKey.get(charge.requestKey) ?? []
    list.push(charge)
    chargesByKey.set(charge.requestKey, list)
  }
  const records = new Map(input.state.records.map((r) => [r.key, r]))

  for (const [key, amount] of input.requests) {
    const charges = chargesByKey.get(key) ?? []
    const first = input.firstOk.get(key)
    const replay = input.replays.get(key)
    const record = records.get(key)
    if (first === undefined) add('never-answered', key, 'no successful response was ever seen')
    if (charges.length === 0) add('lost-effect', key, 'no charge in the database')
    if (charges.length > 1) {
      add(
        'duplicate-effect',
        key,
        `${charges.length} charges: ${charges.map((c) => c.id).join(', ')}`,
      )
    }
    for (const charge of charges) {
      if (charge.amount !== amount) {
        add('wrong-amount', key, `charge ${charge.id} has ${charge.amount}, asked ${amount}`)
      }
    }
    if (record === undefined || record.state !== 'completed') {
      add('unrecorded', key, `record is ${record === undefined ? 'missing' : record.state}`)
    }
    const charge = charges.length === 1 ? charges[0] : undefined
    if (charge === undefined) continue
    if (record?.state === 'completed' && !describesCharge(record.body, charge)) {
      add('record-mismatch', key, `stored ${record.body?.toString('utf8')} but charge ${charge.id}`)
    }
    if (first !== undefined && !describesCharge(first.body, charge)) {
      add(
        'response-mismatch',
        key,
        `client saw ${first.body.toString('utf8')} but charge ${charge.id}`,
      )
    }
    if (first !== undefined) {
      if (replay === undefined) {
        add('replay-mismatch', key, 'no replay')
      } else {
        const differences: string[] = []
        if (replay.status !== first.status)
          differences.push(`status ${replay.status} vs ${first.status}`)
        if (!replay.body.equals(first.body)) {
          differences.push(`body ${replay.body.toString('utf8')} vs ${first.body.toString('utf8')}`)
        }
        for (const name of replayedHeaders) {
          if (replay.headers[name] !== first.headers[name]) {
            differences.push(`${name} ${replay.headers[name]} vs ${first.headers[name]}`)
          }
        }
        if (replay.headers['idempotent-replayed'] !== 'true')
          differences.push('not marked replayed')
        if (differences.length > 0) add('replay-mismatch', key, differences.join('; '))
      }
    }
  }
  return violations
}
