import { randomUUID } from 'node:crypto'
import { type Clock, storedTime } from '../core/clock.js'
import { describeValue, InvalidOptionError } from '../core/errors.js'
import {
  checkStoredKey,
  checkStoredName,
  exceedsBytes,
  isStorableText,
  jsonTextOf,
  maxStoredIdBytes,
} from '../core/text.js'
import { checkClock, checkInteger, checkNumber, checkObject, optionKeys } from '../core/validate.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import {
  parseStoredJson,
  readStoredNumber,
  readStoredWholeNumber,
  StoredDataError,
  type StoredPlace,
} from '../stores/errors.js'
import type { SqlDriver, SqlExecutor } from '../stores/index.js'
import { checkSagaOptions, refuseHoles } from './options.js'
import { flowEventsTable, sagaStatements } from './sql.js'

// A choreographed flow has no orchestrator holding its state: each service reacts to events
// and emits its own. The tracker makes it traceable anyway: it records every event of a flow
// (keyed by correlation id) and rebuilds the flow's state from a declared description of the
// events expected, in order, and how long each may take.

/** One expected event of a flow. */
export interface FlowStepDeclaration {
  /** The event type, e.g. `payment-charged`. */
  readonly event: string
  /**
   * How long after the previous step's event this one may take before the flow counts as
   * stalled, in milliseconds.
   * @default the flow's withinMs
   */
  readonly withinMs?: number | undefined
  /**
   * Event types that mean this step failed (e.g. `payment-declined`): the flow then turns to
   * its compensation. For the flow's steps only: refused on a compensation step.
   * @default []
   */
  readonly failsOn?: readonly string[] | undefined
}

/** A declared choreographed flow. */
export interface FlowDeclaration {
  /** The flow's name. */
  readonly name: string
  /**
   * The events expected, in order (a string is `{ event }`). The first one starts the flow:
   * a correlation id belongs to the flow whose first event it has (no two flows of a tracker
   * may start with the same event; when it has the first events of several, to the one that
   * declares the others' first events, else to the one whose first event came first).
   */
  readonly steps: readonly (string | FlowStepDeclaration)[]
  /**
   * The events expected, in order, after a step failed (e.g. `inventory-released`,
   * `order-cancelled`).
   * @default []
   */
  readonly compensation?: readonly (string | FlowStepDeclaration)[] | undefined
  /**
   * The default time each step may take after the previous one, in milliseconds.
   * @default 60_000
   */
  readonly withinMs?: number | undefined
}

interface CompiledFlowStep {
  readonly event: string
  readonly withinMs: number
  readonly failsOn: readonly string[]
}

/** A validated flow description (from {@link defineFlow}). */
export interface FlowDefinition {
  /** The flow's name. */
  readonly name: string
  /** The expected events, in order. */
  readonly steps: readonly Readonly<CompiledFlowStep>[]
  /** The compensation events, in order. */
  readonly compensation: readonly Readonly<CompiledFlowStep>[]
}

/**
 * Declares a choreographed flow: the events expected per correlation id, in order, with how
 * long each may take, which events mean failure, and the compensation expected after one.
 * Throws `InvalidOptionError` for an empty or repeated event list, an unknown option, or
 * `failsOn` on a compensation step (only the steps' failure events count).
 *
 * @example
 * ```ts
 * const orderFlow = defineFlow({
 *   name: 'order',
 *   steps: ['order-placed', { event: 'payment-charged', failsOn: ['payment-declined'] }, 'order-shipped'],
 *   compensation: ['order-cancelled'],
 *   withinMs: 30_000,
 * })
 * ```
 */
export function defineFlow(declaration: FlowDeclaration): FlowDefinition {
  const d = checkObject('flow', declaration)
  if (typeof d.name !== 'string' || d.name === '')
    throw new InvalidOptionError('flow.name', 'a non-empty string', d.name)
  const where = `flow "${d.name}"`
  // A misspelt option (`within`, `compensations`) was dropped without a word.
  checkSagaOptions(where, d, declarationKeys)
  const withinMs = checkInteger(`${where}.withinMs`, d.withinMs ?? 60_000, 1)
  const compile = (field: string, raw: unknown, required: boolean): CompiledFlowStep[] => {
    if (raw === undefined && !required) return []
    if (!Array.isArray(raw) || (required && raw.length === 0))
      throw new InvalidOptionError(`${where}.${field}`, 'a non-empty array of events', raw)
    refuseHoles(`${where}.${field}`, raw)
    return raw.map((entry: unknown, i) => {
      const at = `${where}.${field}[${i}]`
      const step = typeof entry === 'string' ? { event: entry } : checkObject(at, entry)
      checkSagaOptions(at, step, stepKeys)
      if (typeof step.event !== 'string' || step.event === '')
        throw new InvalidOptionError(`${at}.event`, 'a non-empty event type', step.event)
      // Only the steps' failure events turn a flow to its compensation: one declared on a
      // compensation step was accepted and never looked at.
      if (field === 'compensation' && step.failsOn !== undefined)
        throw new InvalidOptionError(
          `${at}.failsOn`,
          'nothing: failure events belong to the steps, not the compensation',
          step.failsOn,
        )
      const failsOn = step.failsOn ?? []
      // Array.from visits holes (some skips them): `[, 'x']` kept an undefined event type.
      if (
        !Array.isArray(failsOn) ||
        Array.from(failsOn).some((f) => typeof f !== 'string' || f === '')
      )
        throw new InvalidOptionError(`${at}.failsOn`, 'an array of event types', failsOn)
      return {
        event: step.event,
        withinMs: checkInteger(`${at}.withinMs`, step.withinMs ?? withinMs, 1),
        failsOn: [...(failsOn as string[])],
      }
    })
  }
  const steps = compile('steps', d.steps, true)
  const compensation = compile('compensation', d.compensation, false)
  const seen = new Set<string>()
  for (const [i, step] of [...steps, ...compensation].entries()) {
    for (const event of [step.event, ...step.failsOn]) {
      if (seen.has(event))
        throw new InvalidOptionError(`${where} event #${i + 1}`, 'an event type used once', event)
      seen.add(event)
    }
  }
  // Frozen through: a flow is checked once, here, and must not change behind the tracker.
  const frozen = (list: CompiledFlowStep[]) =>
    Object.freeze(
      list.map((step) => Object.freeze({ ...step, failsOn: Object.freeze(step.failsOn) })),
    )
  const flow: FlowDefinition = Object.freeze({
    name: d.name,
    steps: frozen(steps),
    compensation: frozen(compensation),
  })
  definedFlows.add(flow)
  return flow
}

const declarationKeys = optionKeys<FlowDeclaration>({
  name: true,
  steps: true,
  compensation: true,
  withinMs: true,
})
const stepKeys = optionKeys<FlowStepDeclaration>({
  event: true,
  withinMs: true,
  failsOn: true,
})
const trackerOptions = optionKeys<FlowTrackerOptions>({ db: true, flows: true, clock: true })
const stalledOptions = optionKeys<NonNullable<Parameters<FlowTracker['stalled']>[0]>>({
  withinMs: true,
  limit: true,
})

// The flows defineFlow returned, recognised by identity: only they were validated.
const definedFlows = new WeakSet<object>()

/**
 * Checks that `flows` is an array of flows from {@link defineFlow}. Anything else (a
 * declaration passed as it is, a hand-built look-alike) was taken as it was: string steps
 * matched no event, so every flow read as undeclared, silently, and a look-alike skipped the
 * checks of defineFlow (empty steps, repeated events). Throws `InvalidOptionError`
 * (`INVALID_OPTION`) naming the offending entry.
 */
function checkFlows(flows: unknown): asserts flows is readonly FlowDefinition[] {
  if (!Array.isArray(flows))
    throw new InvalidOptionError('flows', 'an array of flows from defineFlow()', flows)
  const starts = new Map<string, string>()
  flows.forEach((flow: unknown, i) => {
    if (typeof flow !== 'object' || flow === null || !definedFlows.has(flow))
      throw new InvalidOptionError(
        `flows[${i}]`,
        'a flow from defineFlow() (declare it with defineFlow, from the breakwater that runs the tracker)',
        flow,
      )
    // A correlation id belongs to the flow it has the first event of: two flows starting with
    // the same event cannot be told apart (the first listed took every instance of both).
    const { name, steps } = flow as FlowDefinition
    const start = steps[0]!.event
    const other = starts.get(start)
    if (other !== undefined)
      throw new InvalidOptionError(
        `flows[${i}]`,
        `a flow that starts with an event no other flow starts with ("${other}" starts with "${start}" too)`,
        name,
      )
    starts.set(start, name)
  })
}

/** An event as the tracker records it. */
export interface TrackedEvent {
  /** The event's id (the outbox event id): recording an id twice keeps the first. */
  readonly id: string
  /** The flow instance it belongs to. */
  readonly correlationId: string
  /** The event type. */
  readonly type: string
  /** The service that emitted (or consumed) it. */
  readonly source?: string
  /** When it happened, epoch ms. */
  readonly at: number
  /** The body, if worth keeping. */
  readonly payload?: unknown
}

/** Where a tracked flow is. */
export type FlowStatus =
  /** Steps are arriving within their time. */
  | 'in-progress'
  /** Every expected event arrived. */
  | 'completed'
  /** A step failed; the compensation events are arriving within their time. */
  | 'compensating'
  /** A step failed and every compensation event arrived. */
  | 'compensated'
  /** A step failed and the flow declares no compensation. */
  | 'failed'
  /** The next expected event is overdue (see `stalledAt`). */
  | 'stalled'

/** One expected step of a tracked flow. */
export interface FlowStepState {
  /** The expected event type. */
  readonly event: string
  /** Whether it arrived. */
  readonly done: boolean
  /** When it arrived. */
  readonly at: number | undefined
  /** Who emitted it. */
  readonly source: string | undefined
}

/** A flow's state, rebuilt from its recorded events. */
export interface FlowState {
  /** The correlation id. */
  readonly correlationId: string
  /** The flow's name, or undefined when no declared flow starts with any of its events. */
  readonly flow: string | undefined
  /** Where it is. */
  readonly status: FlowStatus
  /** The expected steps and whether each arrived. */
  readonly steps: readonly FlowStepState[]
  /** The compensation steps (when a step failed). */
  readonly compensation: readonly FlowStepState[]
  /** The event that failed the flow, if any. */
  readonly failure: TrackedEvent | undefined
  /** The next event expected, if any. */
  readonly next: string | undefined
  /** When the next event becomes overdue, epoch ms. */
  readonly dueAt: number | undefined
  /** For a stalled flow: the step whose event is overdue, and by how long (ms). */
  readonly stalledAt: { readonly event: string; readonly overdueMs: number } | undefined
  /** Expected events that arrived before an earlier step's event (reordered delivery). */
  readonly outOfOrder: readonly string[]
  /** Events of types the flow does not declare. */
  readonly unexpected: readonly TrackedEvent[]
  /** Every recorded event, oldest first. */
  readonly events: readonly TrackedEvent[]
}

/** Options of {@link createFlowTracker}. */
export interface FlowTrackerOptions {
  /** The database with the saga migrations applied (the tracker uses `breakwater_flow_events`). */
  readonly db: SqlDriver
  /** The declared flows, from {@link defineFlow}: at least one (an empty list is refused). */
  readonly flows: readonly FlowDefinition[]
  /**
   * The clock that decides what is overdue.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Message headers the tracker reads (the outbox's names). */
export const trackedHeaders = {
  correlationId: 'correlation-id',
  eventType: 'event-type',
} as const

/** A message as a broker subscription delivers it (structurally: any `IncomingMessage`). */
export interface TrackableMessage {
  readonly id: string
  readonly payload: Uint8Array | string
  readonly headers: Readonly<Record<string, string>>
}

/** Follows correlation ids across services' events; see {@link createFlowTracker}. */
export interface FlowTracker {
  /**
   * Records an event (in `executor`, e.g. the transaction that emits or consumes it). Resolves
   * to false when its id was already recorded. An empty id, correlation id or type, any of
   * them (or the source) holding a NUL or a lone surrogate, or an id or correlation id longer
   * than 2048 UTF-8 bytes (index keys), is refused with `InvalidOptionError`.
   */
  record(executor: SqlExecutor, event: TrackedEvent): Promise<boolean>
  /**
   * Records a broker message by its `correlation-id` and `event-type` headers (ignored, resolving
   * false, when it lacks one, when one of them or its id holds a NUL or a lone surrogate, or when
   * its id or correlation id is longer than 2048 UTF-8 bytes: refused, it would be redelivered
   * for ever). Use as a subscription handler on a consumer group of its own.
   */
  observe(message: TrackableMessage, source?: string): Promise<boolean>
  /**
   * Rebuilds a flow's state; undefined when no event has this correlation id. An event whose
   * stored payload is not JSON, or whose `at` is not a whole number of epoch ms from 0 (a row
   * changed outside breakwater: text or a blob on SQLite, a negative or fractional time), fails
   * it with `StoredDataError` (`STORED_DATA_INVALID`) naming the event, the correlation id and
   * the column.
   */
  state(correlationId: string): Promise<FlowState | undefined>
  /**
   * Flows with events in the last `withinMs` (default one day) whose next event is overdue, most
   * recently active first, at most `limit` of them (default 1000). An event whose stored
   * payload is not JSON is listed without it (the payload plays no part in where a flow is),
   * so that one such row does not hide every stalled flow; `state()` names it. An event whose
   * `at` cannot be read fails it as it fails `state()`: its time decides where the flow is, so
   * the flow could be neither placed nor left out without a word.
   */
  stalled(options?: {
    readonly withinMs?: number | undefined
    readonly limit?: number | undefined
  }): Promise<FlowState[]>
}

interface FlowEventRow {
  seq: number
  event_id: string
  type: string
  source: string | null
  at: unknown
  payload: string | null
}

class SqlFlowTracker implements FlowTracker {
  readonly #db: SqlDriver
  readonly #flows: readonly FlowDefinition[]
  readonly #clock: Clock

  constructor(options: FlowTrackerOptions) {
    checkObject('options', options)
    // A misspelt option (`clok`) was dropped without a word: its default was used instead.
    checkSagaOptions('options', options, trackerOptions)
    const db = options.db
    checkSqlDriver('db', db, 'a SqlDriver')
    this.#db = db
    checkFlows(options.flows)
    // No flow to place events in: state() would call every correlation id undeclared and
    // stalled() would find nothing, for ever, while record() went on writing. An empty list is
    // a forgotten one (flows assembled from config that came up empty), not a recorder-only
    // tracker: a service that only records passes the flows it takes part in.
    if (options.flows.length === 0) {
      throw new InvalidOptionError(
        'flows',
        'at least one flow from defineFlow() (with none, state() and stalled() can place no event)',
        options.flows,
      )
    }
    this.#flows = options.flows
    this.#clock = checkClock('clock', options.clock)
  }

  async record(executor: SqlExecutor, event: TrackedEvent): Promise<boolean> {
    checkObject('event', event)
    // Text both databases store as it is: PostgreSQL refused a NUL with a bare driver error
    // that aborted the caller's transaction (a reactor's message was then redelivered for
    // ever), and stored a lone surrogate as U+FFFD (two correlation ids became one flow).
    // The id and the correlation id are index keys too: over about 2,700 bytes PostgreSQL
    // refused them with a bare "index row size" driver error (SQLite stored them), so they
    // are capped alike on both databases, as the outbox's and the inbox's ids are.
    for (const field of ['id', 'correlationId'] as const)
      checkStoredKey(`event.${field}`, event[field])
    checkStoredName('event.type', event.type)
    if (
      event.source !== undefined &&
      (typeof event.source !== 'string' || !isStorableText(event.source))
    )
      throw new InvalidOptionError(
        'event.source',
        'a string without NUL characters or lone surrogates',
        event.source,
      )
    const at = checkInteger('event.at', event.at, 0)
    // Checked here: a BigInt threw a bare TypeError, and a function was stored as no payload.
    const payload = event.payload === undefined ? null : jsonTextOf('event.payload', event.payload)
    const { rowCount } = await executor.execute(sagaStatements[executor.dialect].insertFlowEvent, [
      event.correlationId,
      event.id,
      event.type,
      event.source ?? null,
      at,
      payload,
    ])
    return rowCount > 0
  }

  observe(message: TrackableMessage, source?: string): Promise<boolean> {
    const correlationId = message.headers[trackedHeaders.correlationId]
    const type = message.headers[trackedHeaders.eventType]
    if (correlationId === undefined || type === undefined) return Promise.resolve(false)
    // Headers the tracker cannot store are ignored as missing ones are: refused, the message
    // would be rejected and redelivered for ever.
    if (!isStorableText(correlationId) || !isStorableText(type) || !isStorableText(message.id))
      return Promise.resolve(false)
    if (exceedsBytes(correlationId, maxStoredIdBytes) || exceedsBytes(message.id, maxStoredIdBytes))
      return Promise.resolve(false)
    return this.record(this.#db, {
      id: message.id || randomUUID(),
      correlationId,
      type,
      ...(source === undefined ? {} : { source }),
      at: storedTime(this.#clock),
    })
  }

  state(correlationId: string): Promise<FlowState | undefined> {
    return this.#state(correlationId, true)
  }

  // `strict`: a payload that is not JSON (a row changed outside breakwater) fails with
  // StoredDataError naming the event. Otherwise, for stalled(), the event is kept without its
  // payload, which plays no part in where the flow is: one such row failed the whole listing,
  // hiding every stalled flow. An `at` that cannot be read fails either way (see storedAt).
  async #state(correlationId: string, strict: boolean): Promise<FlowState | undefined> {
    const rows = await this.#db.query<FlowEventRow>(
      sagaStatements[this.#db.dialect].selectFlowEvents,
      [correlationId],
    )
    if (rows.length === 0) return undefined
    const events = rows.map((row) => {
      const event = {
        id: row.event_id,
        correlationId,
        type: row.type,
        at: storedAt(row, correlationId),
        ...(row.source === null ? {} : { source: row.source }),
      }
      if (row.payload === null) return event
      try {
        return { ...event, payload: storedPayload(row, correlationId) }
      } catch (error) {
        if (strict || !(error instanceof StoredDataError)) throw error
        return event
      }
    })
    return reconstructFlow(this.#flows, correlationId, events, storedTime(this.#clock))
  }

  async stalled(
    options: { readonly withinMs?: number | undefined; readonly limit?: number | undefined } = {},
  ): Promise<FlowState[]> {
    checkObject('options', options)
    checkSagaOptions('options', options, stalledOptions)
    const withinMs = checkInteger('options.withinMs', options.withinMs ?? 86_400_000, 1)
    const limit = checkInteger('options.limit', options.limit ?? 1000, 1)
    // The limit bounds what is returned, not the flows looked at: the flows most recently
    // active come first, and a stalled one is typically among the least, so cutting the
    // candidates at `limit` hid every stall behind that many healthy flows.
    const since = storedTime(this.#clock) - withinMs
    const states: FlowState[] = []
    let cursor: [number | null, string] = [null, '']
    for (;;) {
      const rows = await this.#db.query<{ correlation_id: string; last_at: unknown }>(
        sagaStatements[this.#db.dialect].recentCorrelations,
        [since, limit, ...cursor],
      )
      for (const row of rows) {
        const state = await this.#state(row.correlation_id, false)
        if (state?.status === 'stalled') states.push(state)
        if (states.length === limit) return states
      }
      if (rows.length < limit) return states
      // The last flow's state was read above, which fails on an `at` that is not a whole
      // number (on SQLite MAX(at) picks text or a blob over every number): checked again here,
      // as a NaN cursor matched nothing and every flow after this page was left out silently.
      const last = rows[rows.length - 1]!
      const lastAt = readStoredNumber(last.last_at)
      if (lastAt === undefined)
        throw new StoredDataError(
          {
            table: flowEventsTable,
            row: `latest event (correlation id ${JSON.stringify(last.correlation_id)})`,
            column: 'at',
          },
          `is ${describeValue(last.last_at)}, ${storedTimeText}`,
        )
      cursor = [lastAt, last.correlation_id]
    }
  }
}

function storedPayload(row: FlowEventRow, correlationId: string): unknown {
  return parseStoredJson(row.payload, eventPlace(row, correlationId, 'payload'))
}

const storedTimeText = 'not a time (whole epoch ms from 0)'

/**
 * An event's `at`: `record` stores only whole epoch ms from 0. Read with `Number()`, text or a
 * blob (SQLite keeps either in its INTEGER column) became NaN, an Invalid Date, and a negative
 * or fractional time was taken as it was, so the flow was placed by a time no event has. Unlike
 * the payload, the time decides where the flow is: StoredDataError naming the event, the
 * correlation id and the column, in `state()` and `stalled()` alike.
 */
function storedAt(row: FlowEventRow, correlationId: string): number {
  const at = readStoredWholeNumber(row.at)
  if (at !== undefined) return at
  throw new StoredDataError(
    eventPlace(row, correlationId, 'at')(),
    `is ${describeValue(row.at)}, ${storedTimeText}`,
  )
}

/** Where `column` of a flow event is stored, for StoredDataError (built when called). */
function eventPlace(
  row: Pick<FlowEventRow, 'event_id'>,
  correlationId: string,
  column: string,
): () => StoredPlace {
  return () => ({
    table: flowEventsTable,
    row: `event ${JSON.stringify(row.event_id)} (correlation id ${JSON.stringify(correlationId)})`,
    column,
  })
}

/**
 * Refuses events {@link reconstructFlow} cannot place, naming the first (`events[1].at`). They
 * are read from anywhere (a log, the outbox table), so nothing had checked them: a null event
 * failed with a bare TypeError, a string was taken character by character, and an `at` read as
 * text or NaN sorted and compared as no time does, giving a state that looked right.
 */
function checkEvents(events: unknown): asserts events is readonly TrackedEvent[] {
  if (!Array.isArray(events)) throw new InvalidOptionError('events', 'an array of events', events)
  refuseHoles('events', events)
  for (const [i, raw] of events.entries()) {
    const e = checkObject(`events[${i}]`, raw)
    for (const field of ['id', 'type'] as const)
      if (typeof e[field] !== 'string')
        throw new InvalidOptionError(`events[${i}].${field}`, 'a string', e[field])
    checkNumber(`events[${i}].at`, e.at, -Number.MAX_VALUE, Number.MAX_VALUE)
  }
}

/**
 * Rebuilds a flow's state from its events (pure: the tracker's `state()` uses it, and it works
 * on events read from anywhere, such as the outbox table). Steps count as done when their event
 * arrived at any time, so reordered delivery does not hide progress; it is reported in
 * `outOfOrder`. An event id given more than once counts once, as its first occurrence (as the
 * tracker keeps the first recording of an id): events read from an at-least-once source may
 * repeat. Events of the same millisecond keep the order they were given in. Throws
 * `InvalidOptionError` (code `INVALID_OPTION`) for a flow that {@link defineFlow} did not return,
 * for `events` that are not an array of objects with a string `id` and `type` and a finite
 * number `at` (naming the first such, as `events[1].at`), and for a `now` that is no finite
 * number.
 */
export function reconstructFlow(
  flows: readonly FlowDefinition[],
  correlationId: string,
  events: readonly TrackedEvent[],
  now: number,
): FlowState {
  checkFlows(flows)
  checkEvents(events)
  checkNumber('now', now, -Number.MAX_VALUE, Number.MAX_VALUE)
  const unique = new Map<string, TrackedEvent>()
  for (const e of events) if (!unique.has(e.id)) unique.set(e.id, e)
  const sorted = [...unique.values()].sort((a, b) => a.at - b.at)
  // The position of each type's first event.
  const firstAt = new Map<string, number>()
  for (const [i, e] of sorted.entries()) if (!firstAt.has(e.type)) firstAt.set(e.type, i)
  const first = new Map<string, TrackedEvent>()
  for (const [type, i] of firstAt) first.set(type, sorted[i]!)
  const flow = pickFlow(flows, firstAt)
  if (flow === undefined) {
    return {
      correlationId,
      flow: undefined,
      status: 'in-progress',
      steps: [],
      compensation: [],
      failure: undefined,
      next: undefined,
      dueAt: undefined,
      stalledAt: undefined,
      outOfOrder: [],
      unexpected: sorted,
      events: sorted,
    }
  }
  const stateOf = (step: CompiledFlowStep): FlowStepState => {
    const e = first.get(step.event)
    return { event: step.event, done: e !== undefined, at: e?.at, source: e?.source }
  }
  const steps = flow.steps.map(stateOf)
  const compensation = flow.compensation.map(stateOf)
  const failures = flow.steps.flatMap((s) => s.failsOn)
  const failure = sorted.find((e) => failures.includes(e.type))
  const known = new Set(
    [...flow.steps, ...flow.compensation].flatMap((s) => [s.event, ...s.failsOn]),
  )
  const unexpected = sorted.filter((e) => !known.has(e.type))
  const outOfOrder: string[] = []
  let latest = Number.NEGATIVE_INFINITY
  for (const step of steps) {
    if (step.at === undefined) continue
    if (step.at < latest) outOfOrder.push(step.event)
    latest = Math.max(latest, step.at)
  }
  // The sequence the flow is following: its steps, or after a failure its compensation,
  // whose clock starts at the failure.
  const track = failure === undefined ? flow.steps : flow.compensation
  const trackStates = failure === undefined ? steps : compensation
  const pendingIndex = trackStates.findIndex((s) => !s.done)
  let status: FlowStatus
  let next: string | undefined
  let dueAt: number | undefined
  let stalledAt: FlowState['stalledAt']
  if (pendingIndex < 0) {
    status = failure === undefined ? 'completed' : track.length === 0 ? 'failed' : 'compensated'
  } else {
    const previousAt =
      pendingIndex === 0
        ? failure === undefined
          ? (sorted[0]?.at ?? now)
          : failure.at
        : Math.max(...trackStates.slice(0, pendingIndex).map((s) => s.at ?? 0))
    next = track[pendingIndex]!.event
    dueAt = previousAt + track[pendingIndex]!.withinMs
    if (now > dueAt) {
      status = 'stalled'
      stalledAt = { event: next, overdueMs: now - dueAt }
    } else status = failure === undefined ? 'in-progress' : 'compensating'
  }
  return {
    correlationId,
    flow: flow.name,
    status,
    steps,
    compensation,
    failure,
    next,
    dueAt,
    stalledAt,
    outOfOrder,
    unexpected,
    events: sorted,
  }
}

/**
 * The flow a correlation id follows: one whose first event it has. A flow may start with an
 * event another flow expects later (a payment flow begun by the order flow's
 * `payment-charged`): the first such flow in the list took every order that reached its
 * payment, so the list's order decided. A flow whose start another candidate declares is part
 * of that one, so the outer flow is taken, and among the rest the one whose first event came
 * first (by position in `firstAt`).
 */
function pickFlow(
  flows: readonly FlowDefinition[],
  firstAt: ReadonlyMap<string, number>,
): FlowDefinition | undefined {
  const candidates = flows.filter((f) => firstAt.has(f.steps[0]!.event))
  if (candidates.length <= 1) return candidates[0]
  const declares = (f: FlowDefinition, event: string) =>
    [...f.steps, ...f.compensation].some((s) => s.event === event || s.failsOn.includes(event))
  const outer = candidates.filter(
    (inner) => !candidates.some((o) => o !== inner && declares(o, inner.steps[0]!.event)),
  )
  const pool = outer.length > 0 ? outer : candidates
  const startOf = (f: FlowDefinition) => firstAt.get(f.steps[0]!.event)!
  return pool.reduce((best, f) => (startOf(f) < startOf(best) ? f : best))
}

/**
 * Creates a flow tracker: records the events of choreographed flows (from the services that
 * emit and consume them, or from a subscription that only listens) and rebuilds each flow's
 * state from its declaration, including flows that stalled because the next event did not
 * come in time. An unknown (misspelt) option, and an empty `flows` list (a tracker that could
 * place no event), are refused with `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const tracker = createFlowTracker({ db, flows: [orderFlow] })
 * await subscriber.subscribe('orders', 'flow-tracker', (m) => tracker.observe(m).then(() => {}))
 * const state = await tracker.state('order-42') // { status: 'stalled', stalledAt: { event: 'payment-charged', ... } }
 * ```
 */
export function createFlowTracker(options: FlowTrackerOptions): FlowTracker {
  return new SqlFlowTracker(options)
}
