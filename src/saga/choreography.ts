import { randomUUID } from 'node:crypto'
import { context, propagation } from '@opentelemetry/api'
import type { IncomingMessage } from '../brokers/index.js'
import { type Clock, storedTime } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { exceedsBytes, isStorableText, maxStoredIdBytes } from '../core/text.js'
import { checkClock, checkFunction, checkObject, optionKeys } from '../core/validate.js'
import { reportRefused } from '../outbox/inbox.js'
import {
  CAUSATION_ID_HEADER,
  CORRELATION_ID_HEADER,
  createInbox,
  EVENT_TYPE_HEADER,
  type Outbox,
  type OutboxEvent,
} from '../outbox/index.js'
import { headerValueProblem } from '../outbox/outbox.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from '../stores/index.js'
import { deliverReply } from './admin.js'
import type {
  CompensationContext,
  MergeContext,
  ReplyStep,
  SagaRetryOptions,
  SagaStepInfo,
  StepContext,
} from './definition.js'
import type { FlowTracker } from './flow-tracker.js'
import { checkSagaOptions } from './options.js'

// Messaging on top of the outbox and the inbox: a saga step that sends a command and waits for
// its reply (orchestration), and services that react to events and emit their own
// (choreography). Thin wrappers: the outbox makes a state change and its messages commit
// together, the inbox makes a consumer's effect exactly-once.

/** The header naming the saga step a command belongs to (copied onto its reply). */
export const SAGA_STEP_HEADER = 'saga-step'
/**
 * The header carrying a command's idempotency key (`${sagaId}:${step}`): the same on every
 * resend, so the receiving service can do the work once (`idempotent(key, ...)`) however often
 * the command arrives.
 */
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key'

/** A command as a step describes it: an outbox event without the ids breakwater fills in. */
export type SagaCommand = Omit<OutboxEvent, 'id' | 'correlationId' | 'causationId'>

/** Options of {@link commandStep}. */
export interface CommandStepOptions<I, C, Out> {
  /** The step's name (unique in the saga). */
  readonly name: string
  /** The outbox the command is written to (`createOutbox`). */
  readonly outbox: Outbox
  /**
   * Builds the command. It is written to the outbox in the transaction that records that the
   * step waits, with id `${sagaId}:${step}:${attempt}`, correlation id = saga id, and the
   * `saga-step` and `idempotency-key` headers.
   */
  readonly command: (ctx: StepContext<I, C>) => SagaCommand
  /** How long to wait for the reply after the command committed, in milliseconds. */
  readonly timeoutMs: number
  /**
   * Turns the reply into the step's result; throw to fail the step (a negative reply).
   * @default the reply itself, when it is a plain object
   */
  readonly onReply?: ((reply: unknown, ctx: SagaStepInfo<I, C>) => Out | Promise<Out>) | undefined
  /**
   * Undoes the step after a later failure, and also when the command was sent and no reply was
   * read (a cancel, a last reply timeout): the step's result may then be missing from the
   * context, so find the effect by the command's idempotency key (`${ctx.sagaId}:${ctx.step}`).
   */
  readonly compensation?:
    | ((ctx: CompensationContext<I, MergeContext<C, Partial<Out>>>) => Promise<void> | void)
    | undefined
  /** Retry of the step (a reply timeout is retryable: the command is sent again). */
  readonly retry?: SagaRetryOptions | undefined
  /** Fail the declaration without a compensation. */
  readonly compensationRequired?: boolean | undefined
  /** Retry of the compensation. */
  readonly compensationRetry?: SagaRetryOptions | undefined
  /** Time limit of one compensation attempt, in ms. */
  readonly compensationTimeoutMs?: number | undefined
  /**
   * Time limit of one call of the command's write (`command` and the outbox enqueue) and of
   * one call of `onReply`, in ms (the step's `callTimeoutMs`).
   * @default 30_000
   */
  readonly callTimeoutMs?: number | undefined
}

const commandStepOptions = optionKeys<CommandStepOptions<unknown, unknown, unknown>>({
  name: true,
  outbox: true,
  command: true,
  timeoutMs: true,
  onReply: true,
  compensation: true,
  retry: true,
  compensationRequired: true,
  compensationRetry: true,
  compensationTimeoutMs: true,
  callTimeoutMs: true,
})

/**
 * A saga step that sends a command through the outbox and waits for the reply correlated by
 * saga id (command/reply over any broker): the command commits with the saga's state change,
 * and the reply arrives through {@link sagaReplyHandler} (or `deliverReply`). Use it in
 * `defineSaga`'s steps; give the type parameters when the step's context matters.
 *
 * @example
 * ```ts
 * const charge = commandStep<OrderInput, { reservationId: string }, { chargeId: string }>({
 *   name: 'charge', outbox, timeoutMs: 30_000,
 *   command: (ctx) => ({ aggregateType: 'payment', aggregateId: ctx.input.orderId,
 *     type: 'charge-card', topic: 'payments.commands', payload: { amount: ctx.input.amount } }),
 *   onReply: (reply) => {
 *     const r = reply as { ok: boolean; chargeId: string }
 *     if (!r.ok) throw new Error('declined')
 *     return { chargeId: r.chargeId }
 *   },
 * })
 * ```
 */
export function commandStep<I, C, Out>(
  options: CommandStepOptions<I, C, Out>,
): ReplyStep<I, C, Out> {
  checkObject('commandStep', options)
  // The step is built from the known options alone: any other one (a misspelt compensation)
  // would be dropped without a word.
  checkSagaOptions('commandStep', options, commandStepOptions)
  const outbox = options.outbox
  if (typeof outbox?.enqueue !== 'function')
    throw new InvalidOptionError('commandStep.outbox', 'an Outbox (createOutbox)', outbox)
  const command = checkFunction<(ctx: StepContext<I, C>) => SagaCommand>(
    'commandStep.command',
    options.command,
  )
  const { timeoutMs, onReply } = options
  return {
    name: options.name,
    ...(options.compensation === undefined ? {} : { compensation: options.compensation }),
    ...(options.retry === undefined ? {} : { retry: options.retry }),
    ...(options.compensationRequired === undefined
      ? {}
      : { compensationRequired: options.compensationRequired }),
    ...(options.compensationRetry === undefined
      ? {}
      : { compensationRetry: options.compensationRetry }),
    ...(options.compensationTimeoutMs === undefined
      ? {}
      : { compensationTimeoutMs: options.compensationTimeoutMs }),
    ...(options.callTimeoutMs === undefined ? {} : { callTimeoutMs: options.callTimeoutMs }),
    send: async (ctx, tx) => {
      const event = command(ctx)
      await outbox.enqueue(tx, {
        ...event,
        id: `${ctx.idempotencyKey}:${ctx.attempt}`,
        correlationId: ctx.sagaId,
        headers: {
          ...event.headers,
          [SAGA_STEP_HEADER]: ctx.step,
          [IDEMPOTENCY_KEY_HEADER]: ctx.idempotencyKey,
        },
      })
    },
    awaitReply: onReply === undefined ? { timeoutMs } : { timeoutMs, onReply },
  }
}

/** What a reply to a saga command says; see {@link replyTo}. */
export interface SagaReply {
  /** The reply's event type, e.g. `card-charged`. */
  readonly type: string
  /** Where the saga's reply handler listens. */
  readonly topic: string
  /** The reply body (JSON). */
  readonly payload: unknown
  /**
   * The aggregate type of the reply event.
   * @default 'saga-reply'
   */
  readonly aggregateType?: string | undefined
}

/** The fields of a {@link SagaReply}. */
const sagaReplyFields = optionKeys<SagaReply>({
  type: true,
  topic: true,
  payload: true,
  aggregateType: true,
})
// The reply's payload is the caller's JSON, where null is a value (not an option left out).
const replyData: ReadonlySet<string> = new Set(['payload'])

/**
 * Builds the outbox event that answers a saga command: correlated to the saga, naming the
 * step, caused by the command, with a deterministic id (`${command.id}:reply`). Enqueue it in
 * the transaction that does the command's work (inside the inbox, or `idempotent()`). A reply
 * field it does not know (`aggregatetype`) is refused with `InvalidOptionError` naming it.
 *
 * @example
 * ```ts
 * await outbox.enqueue(tx, replyTo(message, { type: 'card-charged', topic: 'saga.replies', payload: { ok: true } }))
 * ```
 */
export function replyTo(
  command: Pick<IncomingMessage, 'id' | 'headers'>,
  reply: SagaReply,
): OutboxEvent {
  checkObject('reply', reply)
  // A misspelt field (`aggregatetype`) would be dropped; its default used without a word.
  checkSagaOptions('reply', reply, sagaReplyFields, replyData)
  const sagaId = command.headers[CORRELATION_ID_HEADER]
  const step = command.headers[SAGA_STEP_HEADER]
  if (sagaId === undefined || step === undefined) {
    throw new InvalidOptionError(
      'command.headers',
      `the ${CORRELATION_ID_HEADER} and ${SAGA_STEP_HEADER} headers of a saga command`,
      command.headers,
    )
  }
  return {
    id: `${command.id}:reply`,
    aggregateType: reply.aggregateType ?? 'saga-reply',
    aggregateId: sagaId,
    type: reply.type,
    topic: reply.topic,
    payload: reply.payload,
    correlationId: sagaId,
    causationId: command.id,
    headers: { [SAGA_STEP_HEADER]: step },
  }
}

/** Options of {@link sagaReplyHandler}. */
export interface SagaReplyHandlerOptions {
  /**
   * The inbox consumer name under which reply messages are deduplicated.
   * @default 'saga-replies'
   */
  readonly consumer?: string | undefined
  /**
   * Called for a reply that names no saga (or a step it does not have), that its step awaits
   * no more (`deliverReply`'s `'stale'`), whose payload cannot be stored (JSON that parses to a
   * value with no JSON form, such as `1e400`), or whose message id no inbox record can hold (empty,
   * a NUL, a lone surrogate: the reason is the `POISON_MESSAGE` error's message); it is
   * acknowledged and dropped rather than redelivered forever.
   * @default ignore
   */
  readonly onIgnored?: ((message: IncomingMessage, reason: string) => void) | undefined
  /**
   * Source of the reply's receive time.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * A subscription handler for saga replies: each message is recorded through an inbox (a
 * redelivered message changes nothing) and handed to `deliverReply` by its correlation id and
 * `saga-step` header, in one transaction; the saga wakes and a worker continues it.
 *
 * @example
 * ```ts
 * await broker.subscriber.subscribe('saga.replies', 'order-saga', sagaReplyHandler(db))
 * ```
 */
export function sagaReplyHandler(
  db: SqlDriver,
  options: SagaReplyHandlerOptions = {},
): (message: IncomingMessage) => Promise<void> {
  checkSqlDriver('db', db, 'a SqlDriver')
  checkObject('options', options)
  // A misspelt option (`onIgnore`) was dropped without a word: ignored replies went unreported.
  checkSagaOptions('options', options, replyHandlerOptions)
  if (options.onIgnored !== undefined) checkFunction('options.onIgnored', options.onIgnored)
  const inbox = createInbox({
    consumer: options.consumer ?? 'saga-replies',
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  })
  const clock = checkClock('clock', options.clock)
  const onIgnored = options.onIgnored ?? (() => {})
  return async (message) => {
    const sagaId = message.headers[CORRELATION_ID_HEADER]
    const step = message.headers[SAGA_STEP_HEADER]
    // An empty header names nothing either, nor one with text no saga id or step can hold (a
    // NUL): deliverReply refuses them, so the message would be redelivered forever.
    if (!sagaId || !step) {
      onIgnored(message, `no ${CORRELATION_ID_HEADER} or ${SAGA_STEP_HEADER} header`)
      return
    }
    if (!isStorableText(sagaId) || !isStorableText(step)) {
      onIgnored(
        message,
        `the ${CORRELATION_ID_HEADER} or ${SAGA_STEP_HEADER} header holds a NUL or a lone surrogate`,
      )
      return
    }
    const reply = parsePayload(message.payload)
    let ignored: string | undefined
    await db.transaction(async (tx) => {
      const handled = await inbox.handle(tx, message, async () => {
        // A savepoint: a reply for an unknown saga is recorded in the inbox and dropped,
        // without failing (and rolling back) the whole message.
        try {
          const delivered = await tx.transaction((sp) =>
            deliverReply(sp, sagaId, step, reply, {
              clock,
              ...attemptOption(message.headers[CAUSATION_ID_HEADER], sagaId, step),
            }),
          )
          if (delivered === 'stale')
            ignored = `saga ${sagaId}: step "${step}" awaits no reply to this command any more (it already ran, this reply was read before, or the saga is no longer running: compensating, parked or finished)`
        } catch (error) {
          const code = (error as { code?: unknown }).code
          // INVALID_OPTION: the reply parsed but cannot be stored (1e400 parses to Infinity,
          // which JSON cannot write back); every delivery of it fails alike, so it is dropped
          // and reported, not redelivered forever.
          if (
            code !== 'SAGA_NOT_FOUND' &&
            code !== 'SAGA_STATE_CONFLICT' &&
            code !== 'INVALID_OPTION'
          )
            throw error
          ignored = (error as Error).message
        }
      })
      // An id no inbox record can hold (POISON_MESSAGE): refused for good, like a reply that
      // names no saga, rather than thrown and redelivered forever.
      if (handled.refused !== undefined) ignored = handled.refused.message
    })
    if (ignored !== undefined) onIgnored(message, ignored)
  }
}

// The command a reply answers is its causation id, `${sagaId}:${step}:${attempt}` (commandStep's
// command id, replyTo's causation id): its attempt lets deliverReply drop a redelivered copy of a
// reply that was already read. Anything else names no attempt.
function attemptOption(
  causationId: string | undefined,
  sagaId: string,
  step: string,
): { attempt?: number } {
  const prefix = `${sagaId}:${step}:`
  if (causationId === undefined || !causationId.startsWith(prefix)) return {}
  const rest = causationId.slice(prefix.length)
  if (!/^[1-9][0-9]{0,8}$/.test(rest)) return {}
  return { attempt: Number(rest) }
}

/** An event as a reacting service sees it. */
export interface ChoreographyEvent {
  /** The message (event) id. */
  readonly id: string
  /** The event type (`event-type` header; the topic when it is absent or empty). */
  readonly type: string
  /** The topic it arrived on. */
  readonly topic: string
  /** Its ordering key (aggregate id). */
  readonly key: string
  /** The flow it belongs to (`correlation-id` header; the event's own id when absent or empty). */
  readonly correlationId: string
  /** The event that caused it (`causation-id` header), if any. */
  readonly causationId: string | undefined
  /** The body, parsed as JSON (the raw text when it is not JSON). */
  readonly payload: unknown
  /** Every header. */
  readonly headers: Readonly<Record<string, string>>
}

/** An event a reaction emits: correlation and causation are filled in. */
export type EmittedEvent = Omit<OutboxEvent, 'correlationId' | 'causationId'>

/** What a reaction receives. */
export interface ReactionContext {
  /** The transaction of the reaction: business writes go here, with the inbox record. */
  readonly tx: SqlTransaction
  /** The event reacted to. */
  readonly event: ChoreographyEvent
  /**
   * Emits an event through the outbox in `tx`, carrying the flow's correlation id and this
   * event as its cause (and records it with the tracker, when one is given). Resolves to its id.
   */
  emit(event: EmittedEvent): Promise<string>
}

/** Options of {@link createReactor}. */
export interface ReactorOptions {
  /** The service's database (outbox and inbox migrated). */
  readonly db: SqlDriver
  /** The service's name: its inbox consumer, and the `source` recorded with the tracker. */
  readonly consumer: string
  /** Where emitted events go. */
  readonly outbox: Outbox
  /** The reaction per event type; other types are acknowledged and skipped. */
  readonly reactions: Readonly<Record<string, (ctx: ReactionContext) => Promise<void>>>
  /**
   * Records consumed and emitted events in the same transaction. Only when the tracker's table
   * is in this service's database; otherwise run the tracker as its own subscriber
   * (`tracker.observe`).
   * @default none
   */
  readonly tracker?: FlowTracker | undefined
  /**
   * Source of inbox and tracker timestamps.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * A choreography participant: a subscription handler that runs the reaction for each event's
 * type inside one transaction with the inbox record (a redelivered event does nothing) and
 * emits the service's own events through the outbox in that same transaction, correlated to
 * the flow and caused by the event. An event whose message id no inbox record can hold, or
 * whose `correlation-id` header holds a NUL or a lone surrogate (with a tracker: is longer than
 * 2048 UTF-8 bytes, or whose `event-type` holds one), or whose `correlation-id` or message id
 * the outbox would refuse on what it emits (a CR, LF, or leading or trailing whitespace, which
 * some broker cannot carry as a header), is acknowledged without its reaction and reported on
 * the channel `breakwater:outbox:message-refused` (`POISON_MESSAGE`) rather than redelivered
 * forever.
 *
 * @example
 * ```ts
 * const payments = createReactor({ db, consumer: 'payments', outbox, reactions: {
 *   'order-placed': async ({ tx, event, emit }) => {
 *     await tx.execute('INSERT INTO charges (order_id) VALUES ($1)', [event.key])
 *     await emit({ aggregateType: 'payment', aggregateId: event.key, type: 'payment-charged', payload: {} })
 *   },
 * } })
 * await broker.subscriber.subscribe('orders', 'payments', payments)
 * ```
 */
export function createReactor(
  options: ReactorOptions,
): (message: IncomingMessage) => Promise<void> {
  checkObject('options', options)
  // A misspelt option (`traker`) was dropped without a word: the flow went untracked.
  checkSagaOptions('options', options, reactorOptions)
  const db = options.db
  checkSqlDriver('db', db, 'a SqlDriver')
  if (typeof options.consumer !== 'string' || options.consumer === '')
    throw new InvalidOptionError('consumer', 'a non-empty string', options.consumer)
  if (typeof options.outbox?.enqueue !== 'function')
    throw new InvalidOptionError('outbox', 'an Outbox (createOutbox)', options.outbox)
  checkTracker('tracker', options.tracker)
  const reactions = checkObject('reactions', options.reactions)
  for (const [type, reaction] of Object.entries(reactions))
    checkFunction(`reactions.${type}`, reaction)
  const clock = checkClock('clock', options.clock)
  const inbox = createInbox({ consumer: options.consumer, clock })
  const { outbox, tracker, consumer } = options
  return async (message) => {
    const unfollowable = unfollowableReason(message, tracker !== undefined)
    if (unfollowable !== undefined) {
      // As the inbox reports a message whose id it cannot record: on the same channel, let go.
      reportRefused(consumer, message.id, unfollowable)
      return
    }
    await db.transaction(async (tx) => {
      await inbox.handle(tx, message, async () => {
        const event = choreographyEvent(message)
        if (tracker !== undefined) {
          await tracker.record(tx, {
            id: event.id,
            correlationId: event.correlationId,
            type: event.type,
            source: consumer,
            at: storedTime(clock),
          })
        }
        // Own properties only: an event type such as `valueOf` or `__proto__` is a type
        // without a reaction (skipped), not Object.prototype's member (which threw, so the
        // message was redelivered forever).
        const reaction = Object.hasOwn(options.reactions, event.type)
          ? options.reactions[event.type]
          : undefined
        if (reaction === undefined) return
        // In the trace of the event (its traceparent, tracestate, baggage): the outbox copies
        // the active context into what the reaction emits, and in the subscriber's context
        // every hop of the flow started a trace of its own. A no-op without an OpenTelemetry
        // propagator, as the outbox's injection is.
        const traced = propagation.extract(context.active(), message.headers)
        await context.with(traced, reaction, undefined, {
          tx,
          event,
          emit: (emitted: EmittedEvent) =>
            emitEvent(
              tx,
              { outbox, consumer, clock, ...(tracker ? { tracker } : {}) },
              {
                ...emitted,
                correlationId: event.correlationId,
                causationId: event.id,
              },
            ),
        })
      })
    })
  }
}

/**
 * Why a reactor can never carry this event's flow on, or undefined. Its correlation id goes
 * onto everything the reaction emits (the outbox refuses a NUL or a lone surrogate) and, with a
 * tracker, into an index key (at most 2048 bytes), as its type goes into the tracker: thrown
 * inside the reaction's transaction, the event was redelivered for ever, holding back its key.
 * So does a correlation id, or a message id (each emitted event's causation-id, and its
 * correlation-id when the header is absent), that the outbox refuses as a header value some
 * broker cannot carry (CR, LF, leading or trailing whitespace): another producer's message, on
 * a broker that carries it. Refused rather than trimmed: a changed id would split the flow.
 */
function unfollowableReason(message: IncomingMessage, tracked: boolean): string | undefined {
  const headers = message?.headers ?? {}
  const checks: [string, string | undefined][] = [
    [CORRELATION_ID_HEADER, headers[CORRELATION_ID_HEADER]],
    ...(tracked ? [[EVENT_TYPE_HEADER, headers[EVENT_TYPE_HEADER]] as [string, string]] : []),
  ]
  for (const [header, value] of checks) {
    if (typeof value !== 'string') continue
    if (!isStorableText(value))
      return `its ${header} header holds a NUL or a lone surrogate (text the database cannot store), so its flow cannot be followed`
    if (tracked && header === CORRELATION_ID_HEADER && exceedsBytes(value, maxStoredIdBytes))
      return `its ${header} header is longer than ${maxStoredIdBytes} UTF-8 bytes (more than the flow tracker can index), so its flow cannot be followed`
  }
  const carried: [string, unknown][] = [
    [`${CORRELATION_ID_HEADER} header`, headers[CORRELATION_ID_HEADER]],
    [`message id (the ${CAUSATION_ID_HEADER} of what it emits)`, message?.id],
  ]
  for (const [what, value] of carried) {
    const problem = typeof value === 'string' ? headerValueProblem(value) : undefined
    if (problem !== undefined)
      return `its ${what} cannot be carried on to the events its reaction emits (${problem}; the outbox refuses it), so its flow cannot be followed`
  }
  return undefined
}

/** Options of {@link emitEvent}. */
export interface EmitEventOptions {
  /** Where the event goes. */
  readonly outbox: Outbox
  /** Records the event with the tracker in the same transaction. @default none */
  readonly tracker?: FlowTracker | undefined
  /** The emitting service, recorded as the event's source. @default undefined */
  readonly consumer?: string | undefined
  /** Source of the tracker timestamp. @default systemClock */
  readonly clock?: Clock | undefined
}

/**
 * Emits an event through the outbox in `tx` (and records it with the tracker): how a service
 * starts a choreographed flow alongside its business write. The correlation id defaults to the
 * event's id, which then names the flow (and is sent as its `correlation-id` header). An
 * unknown (misspelt) option is refused with `InvalidOptionError` before anything is written.
 *
 * @example
 * ```ts
 * await db.transaction(async (tx) => {
 *   await tx.execute('INSERT INTO orders (id) VALUES ($1)', ['o-42'])
 *   await emitEvent(tx, { outbox, tracker }, { id: 'o-42:placed', correlationId: 'o-42',
 *     aggregateType: 'order', aggregateId: 'o-42', type: 'order-placed', payload: {} })
 * })
 * ```
 */
export async function emitEvent(
  tx: SqlExecutor,
  options: EmitEventOptions,
  event: OutboxEvent,
): Promise<string> {
  checkObject('options', options)
  // A misspelt tracker (`traker`) left the flow's first event unrecorded: never reported stalled.
  checkSagaOptions('options', options, emitEventOptions)
  // Both before the write: a TypeError (no code) otherwise, the tracker's after the enqueue.
  if (typeof options.outbox?.enqueue !== 'function')
    throw new InvalidOptionError('options.outbox', 'an Outbox (createOutbox)', options.outbox)
  checkTracker('options.tracker', options.tracker)
  // The correlation id that names the flow goes out as the `correlation-id` header too: left
  // out, a tracker that only observes (`tracker.observe` needs the header) dropped the flow's
  // first event, and the flow, known by its later events alone, was never reported stalled.
  const started =
    event.correlationId === undefined
      ? (() => {
          const id = event.id ?? randomUUID()
          return { ...event, id, correlationId: id }
        })()
      : event
  const id = await options.outbox.enqueue(tx, started)
  if (options.tracker !== undefined) {
    await options.tracker.record(tx, {
      id,
      correlationId: started.correlationId ?? id,
      type: event.type,
      ...(options.consumer === undefined ? {} : { source: options.consumer }),
      at: storedTime(checkClock('clock', options.clock)),
    })
  }
  return id
}

const replyHandlerOptions = optionKeys<SagaReplyHandlerOptions>({
  consumer: true,
  onIgnored: true,
  clock: true,
})
const reactorOptions = optionKeys<ReactorOptions>({
  db: true,
  consumer: true,
  outbox: true,
  reactions: true,
  tracker: true,
  clock: true,
})
const emitEventOptions = optionKeys<EmitEventOptions>({
  outbox: true,
  tracker: true,
  consumer: true,
  clock: true,
})

/**
 * Refuses a tracker that is not a FlowTracker: its `record` failed with a TypeError (no code)
 * inside each message's transaction, so every message was rolled back and redelivered for ever.
 */
function checkTracker(option: string, tracker: unknown): void {
  if (tracker === undefined) return
  if (typeof (tracker as { record?: unknown } | null)?.record !== 'function')
    throw new InvalidOptionError(option, 'a FlowTracker (createFlowTracker)', tracker)
}

const decoder = new TextDecoder()

function parsePayload(payload: Uint8Array | string): unknown {
  const text = typeof payload === 'string' ? payload : decoder.decode(payload)
  try {
    return JSON.parse(text) as unknown
  } catch {
    return text
  }
}

/** Reads an incoming message as a choreography event. */
export function choreographyEvent(message: IncomingMessage): ChoreographyEvent {
  const headers = message.headers
  return {
    id: message.id,
    // An empty header names nothing, as a missing one: taken as it was, the tracker and the
    // outbox refused it inside the reaction's transaction, so the event was redelivered for ever.
    type: headers[EVENT_TYPE_HEADER] || message.topic,
    topic: message.topic,
    key: message.key,
    correlationId: headers[CORRELATION_ID_HEADER] || message.id,
    causationId: headers[CAUSATION_ID_HEADER],
    payload: parsePayload(message.payload),
    headers,
  }
}
