import { rolledBackByServer } from '../stores/errors.js'
import type { SqlDriver, SqlExecutor } from '../stores/index.js'
import {
  type AloneExpectation,
  postgresAppend,
  postgresAppendAlone,
  postgresAppendBatch,
} from './sql.js'

/** One standalone append as the PostgreSQL functions take it. */
export interface BatchedAppend {
  readonly stream: string
  /** 0 any, 1 noStream, 2 streamExists, 3 a version. */
  readonly kind: number
  readonly expected: number
  readonly ids: readonly string[]
  readonly types: readonly string[]
  readonly versions: readonly number[]
  readonly data: readonly string[]
  readonly metadata: readonly (string | null)[]
  readonly createdAt: number
}

/** What breakwater_append said about one append. */
export interface AppendOutcome {
  readonly ok: boolean
  /** The new version (ok), or the stream's actual version (not ok). */
  readonly version: number
  readonly deleted: boolean
  /** Its events' positions (ok only). */
  readonly positions: readonly number[] | null
}

interface Queued {
  readonly append: BatchedAppend
  readonly resolve: (outcome: AppendOutcome) => void
  readonly reject: (error: unknown) => void
}

type AloneRow = { v: number | string; p: number | string }

type SingleRow = {
  r_ok: boolean
  r_version: number | string
  r_positions: (number | string)[] | null
  r_deleted: boolean | null
}

type BatchRow = {
  r_ok: boolean[]
  r_versions: (number | string)[]
  r_deleted: boolean[]
  r_positions: (number | string | null)[]
}

/** The most appends one group-commit statement carries. */
export const maxBatchAppends = 64
/** The most events one group-commit statement carries (a larger append goes alone). */
export const maxBatchEvents = 1000

/**
 * Group commit of standalone PostgreSQL appends. At most `maxInFlight` statements run at once;
 * appends that arrive meanwhile queue and go out together in the next one, so a lone append is
 * sent at once (no timer, no added latency) and, under concurrency, appends share one
 * transaction and one WAL flush. Each append keeps its own expectation: the batch function
 * checks them one by one and a failed one writes nothing without failing the others.
 *
 * When the database rejects a whole batch statement (an error response: the transaction rolled
 * back, nothing was written), each of its appends is retried alone, so an error belongs to the
 * append that caused it. Any other failure (a lost connection: the commit may have happened)
 * fails every append of the batch with that error, as it would fail a lone append.
 */
export class AppendBatcher {
  readonly #db: SqlDriver
  readonly #maxInFlight: number
  #queue: Queued[] = []
  #inFlight = 0

  constructor(db: SqlDriver, maxInFlight: number) {
    this.#db = db
    this.#maxInFlight = maxInFlight
  }

  append(append: BatchedAppend): Promise<AppendOutcome> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ append, resolve, reject })
      this.#kick()
    })
  }

  #kick(): void {
    while (this.#inFlight < this.#maxInFlight && this.#queue.length > 0) {
      const batch = this.#take()
      this.#inFlight++
      void this.#send(batch).finally(() => {
        // The appenders just resolved append again from promise reactions: let them all queue
        // (nextTick runs once the microtask queue is drained), the slot still taken, so that
        // they share the next batch instead of the first of them going out alone.
        process.nextTick(() => {
          this.#inFlight--
          this.#kick()
        })
      })
    }
  }

  #take(): Queued[] {
    let events = 0
    let n = 0
    while (n < this.#queue.length && n < maxBatchAppends) {
      const size = this.#queue[n]!.append.ids.length
      if (n > 0 && events + size > maxBatchEvents) break
      events += size
      n++
    }
    return this.#queue.splice(0, n)
  }

  async #send(batch: Queued[]): Promise<void> {
    if (batch.length === 1) {
      const only = batch[0]!
      try {
        only.resolve(await this.#single(only.append))
      } catch (error) {
        only.reject(error)
      }
      return
    }
    let outcomes: AppendOutcome[]
    try {
      outcomes = await this.#many(batch.map((q) => q.append))
    } catch (error) {
      if (!rolledBackByServer(error)) {
        for (const q of batch) q.reject(error)
        return
      }
      // Nothing of the batch was written: each append alone, in the order they were made.
      for (const q of batch) {
        try {
          q.resolve(await this.#single(q.append))
        } catch (singleError) {
          q.reject(singleError)
        }
      }
      return
    }
    for (let i = 0; i < batch.length; i++) batch[i]!.resolve(outcomes[i]!)
  }

  #single(a: BatchedAppend): Promise<AppendOutcome> {
    return appendAlone(this.#db, a)
  }

  async #many(appends: readonly BatchedAppend[]): Promise<AppendOutcome[]> {
    // Stream order (stable, so one stream's appends keep theirs): two batches, from this
    // process or another, then lock the stream rows they share in the same order.
    const order = appends.map((_, i) => i)
    order.sort((x, y) => {
      const a = appends[x]!.stream
      const b = appends[y]!.stream
      return a < b ? -1 : a > b ? 1 : x - y
    })
    const streams: string[] = []
    const kinds: number[] = []
    const expected: number[] = []
    const counts: number[] = []
    const createdAt: number[] = []
    const ids: string[] = []
    const types: string[] = []
    const versions: number[] = []
    const data: string[] = []
    const metadata: (string | null)[] = []
    for (const i of order) {
      const a = appends[i]!
      streams.push(a.stream)
      kinds.push(a.kind)
      expected.push(a.expected)
      counts.push(a.ids.length)
      createdAt.push(a.createdAt)
      for (let e = 0; e < a.ids.length; e++) {
        ids.push(a.ids[e]!)
        types.push(a.types[e]!)
        versions.push(a.versions[e]!)
        data.push(a.data[e]!)
        metadata.push(a.metadata[e]!)
      }
    }
    const rows = await this.#db.query<BatchRow>(postgresAppendBatch, [
      textArray(streams),
      integerArray(kinds),
      integerArray(expected),
      integerArray(counts),
      textArray(ids),
      textArray(types),
      integerArray(versions),
      textArray(data),
      textArray(metadata),
      integerArray(createdAt),
    ])
    const row = rows[0]
    if (row === undefined || row.r_ok.length !== appends.length) {
      throw new Error('breakwater_append_batch returned no row')
    }
    const outcomes: AppendOutcome[] = new Array(appends.length)
    let offset = 0
    for (let k = 0; k < order.length; k++) {
      const i = order[k]!
      const count = appends[i]!.ids.length
      const ok = row.r_ok[k] === true
      outcomes[i] = {
        ok,
        version: Number(row.r_versions[k]),
        deleted: row.r_deleted[k] === true,
        positions: ok ? row.r_positions.slice(offset, offset + count).map(Number) : null,
      }
      offset += count
    }
    return outcomes
  }
}

const aloneExpectations: readonly AloneExpectation[] = ['any', 'noStream', 'streamExists']

/**
 * A PostgreSQL array literal of text values (NULL for null), what pg sends for a JS array: every
 * element quoted, backslashes and double quotes escaped, but a value that has none is not
 * scanned by a regular expression (pg's escaping took a third more time than this).
 */
export function textArray(values: readonly (string | null)[]): string {
  let literal = '{'
  for (let i = 0; i < values.length; i++) {
    if (i > 0) literal += ','
    let value = values[i]
    if (value === null || value === undefined) {
      literal += 'NULL'
      continue
    }
    if (value.includes('\\')) value = value.replace(/\\/g, '\\\\')
    if (value.includes('"')) value = value.replace(/"/g, '\\"')
    literal += `"${value}"`
  }
  return `${literal}}`
}

/** A PostgreSQL array literal of integers. */
export function integerArray(values: readonly number[]): string {
  return `{${values.join(',')}}`
}

/**
 * One standalone append on PostgreSQL (autocommit, no caller transaction): one statement, one
 * round trip (see postgresAppendAlone). When its expectation fails it writes nothing; then
 * breakwater_append runs it again, which reports the stream's state exactly as before (or
 * appends, when the stream came back to the expected state in between: that append then
 * happened after the change that made it possible, as any append does).
 */
export async function appendAlone(db: SqlExecutor, a: BatchedAppend): Promise<AppendOutcome> {
  const count = a.ids.length
  const expectation =
    a.kind === 3 ? (a.expected === 0 ? 'version0' : 'version') : aloneExpectations[a.kind]!
  const params: unknown[] =
    count === 1
      ? [a.stream, a.createdAt, a.ids[0], a.types[0], a.versions[0], a.data[0], a.metadata[0]]
      : [
          a.stream,
          a.createdAt,
          textArray(a.ids),
          textArray(a.types),
          integerArray(a.versions),
          textArray(a.data),
          textArray(a.metadata),
          count,
        ]
  if (expectation === 'version') params.push(a.expected)
  const rows = await db.query<AloneRow>(postgresAppendAlone(expectation, count > 1), params)
  if (rows.length === 0) return appendThroughFunction(db, a)
  if (rows.length !== count) {
    throw new Error(`breakwater append returned ${rows.length} rows for ${count} events`)
  }
  if (count === 1) {
    const row = rows[0]!
    return { ok: true, version: Number(row.v), deleted: false, positions: [Number(row.p)] }
  }
  // One row per event, each with its stream version; positions in stream-version order.
  let first = Number.POSITIVE_INFINITY
  for (const row of rows) first = Math.min(first, Number(row.v))
  const positions = new Array<number>(count)
  for (const row of rows) positions[Number(row.v) - first] = Number(row.p)
  return { ok: true, version: first + count - 1, deleted: false, positions }
}

async function appendThroughFunction(db: SqlExecutor, a: BatchedAppend): Promise<AppendOutcome> {
  const rows = await db.query<SingleRow>(postgresAppend, [
    a.stream,
    a.kind,
    a.expected,
    a.ids,
    a.types,
    a.versions,
    a.data,
    a.metadata,
    a.createdAt,
    false,
  ])
  const row = rows[0]
  if (row === undefined) throw new Error('breakwater_append returned no row')
  return {
    ok: row.r_ok && row.r_positions !== null,
    version: Number(row.r_version),
    deleted: row.r_deleted === true,
    positions: row.r_positions === null ? null : row.r_positions.map(Number),
  }
}
