import { InvalidOptionError } from '../core/errors.js'
import { checkInteger, checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { LruCache } from '../stores/lru.js'
import type { IdempotencyRecord } from './store.js'

/**
 * Limits of the in-process cache of completed results (`replayCache` of
 * `createIdempotency`).
 */
export interface ReplayCacheOptions {
  /**
   * How many completed keys are kept (least recently replayed go first).
   * @default 1000
   */
  readonly maxEntries?: number | undefined
  /**
   * How long a result is replayed from memory after it was recorded or read from the store;
   * never past the record's retention.
   * @default 60000
   */
  readonly maxAgeMs?: number | undefined
  /**
   * Results with a larger body are replayed from the store only (bounds the cache's memory:
   * at most `maxEntries` times this).
   * @default 16384
   */
  readonly maxBodyBytes?: number | undefined
}

/** The keys ReplayCacheOptions takes (internal). */
export const replayCacheOptions = optionKeys<ReplayCacheOptions>({
  maxEntries: true,
  maxAgeMs: true,
  maxBodyBytes: true,
})

interface Entry {
  readonly record: IdempotencyRecord
  /** When the entry stops being used (epoch ms on the core's clock). */
  readonly untilMs: number
}

/**
 * Completed results, kept in memory so that a replay answers without a statement.
 *
 * Why it is safe across processes: a completed record never changes while its retention runs.
 * Every write of the protocol is fenced to in-progress records (takeover, phases, the result,
 * release) or to records past their retention (recycle, the sweeper), so until `expiresAt`
 * every process reads the same record. An entry is dropped at the record's retention, and
 * after `maxAgeMs` at the latest, which bounds what a record changed outside breakwater (a row
 * deleted by hand) or a clock that disagrees with the database's other clients can show.
 */
export class ReplayCache {
  readonly #entries: LruCache<string, Entry>
  readonly #maxAgeMs: number
  readonly #maxBodyBytes: number

  constructor(options: ReplayCacheOptions) {
    this.#entries = new LruCache(
      checkInteger('replayCache.maxEntries', options.maxEntries ?? 1_000, 1),
    )
    this.#maxAgeMs = checkInteger('replayCache.maxAgeMs', options.maxAgeMs ?? 60_000, 1)
    this.#maxBodyBytes = checkInteger('replayCache.maxBodyBytes', options.maxBodyBytes ?? 16_384, 0)
  }

  /** The completed record of the key, if kept and still valid at `nowMs`. */
  get(scope: string, key: string, nowMs: number): IdempotencyRecord | undefined {
    const id = entryId(scope, key)
    const entry = this.#entries.get(id)
    if (entry === undefined) return undefined
    if (entry.untilMs <= nowMs) {
      this.#entries.delete(id)
      return undefined
    }
    return entry.record
  }

  /**
   * Keeps a completed record, recorded or read from the store at `nowMs` (others are ignored).
   * `copyBody`: the body's buffer belongs to someone else (the response the adapter captured),
   * so a record that is kept gets a copy of it.
   */
  keep(record: IdempotencyRecord, nowMs: number, copyBody = false): void {
    const result = record.result
    if (record.state !== 'completed' || result === undefined) return
    if (result.body.byteLength > this.#maxBodyBytes) return
    const untilMs = Math.min(record.expiresAtMs, nowMs + this.#maxAgeMs)
    if (untilMs <= nowMs) return
    const kept = copyBody
      ? { ...record, result: { ...result, body: Buffer.from(result.body) } }
      : record
    this.#entries.set(entryId(record.scope, record.key), { record: kept, untilMs })
  }
}

// Scopes and keys never hold NUL (both are checked), so the pair is unambiguous.
function entryId(scope: string, key: string): string {
  return `${scope}\u0000${key}`
}

/** The cache `replayCache` asks for: undefined when it is `false`. */
export function replayCacheOf(value: unknown): ReplayCache | undefined {
  if (value === false) return undefined
  if (value === undefined || value === true) return new ReplayCache({})
  if (typeof value !== 'object' || value === null) {
    throw new InvalidOptionError(
      'replayCache',
      'false, true, or an object of limits ({ maxEntries, maxAgeMs, maxBodyBytes })',
      value,
    )
  }
  const options = checkObject('replayCache', value)
  checkOptionKeys('replayCache', options, replayCacheOptions)
  return new ReplayCache(options as ReplayCacheOptions)
}
