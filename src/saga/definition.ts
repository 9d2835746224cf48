import { type Clock, maxTimerDelayMs } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkInteger,
  checkNumber,
  checkObject,
  optionKeys,
} from '../core/validate.js'
import {
  type Backoff,
  exponentialBackoff,
  isTransientFailure,
  type Jitter,
  type RandomSource,
} from '../index.js'
import type { SqlTransaction } from '../stores/index.js'
import { checkSagaOptions, refuseHoles } from './options.js'

/**
 * Retry settings of a step or a compensation: the options of breakwater's `retry()` that make
 * sense for a durable step. Delays between attempts are persisted (`next_run_at`), so they
 * survive restarts; the worker does not sleep through them.
 */
export interface SagaRetryOptions {
  /**
   * The most attempts in total, counting the first (1 disables retrying). An attempt whose
   * worker died before recording its outcome counts too, so a step that crashes its worker
   * every time cannot loop forever.
   * @default 3 for steps, 10 for compensations
   */
  readonly maxAttempts?: number | undefined
  /**
   * The backoff ceiling before the first retry, in milliseconds.
   * @default 100 for steps, 500 for compensations
   */
  readonly baseDelayMs?: number | undefined
  /**
   * How much the ceiling grows per retry (>= 1).
   * @default 2
   */
  readonly factor?: number | undefined
  /**
   * The cap on any delay, in milliseconds.
   * @default 30_000 for steps, 60_000 for compensations
   */
  readonly maxDelayMs?: number | undefined
  /**
   * How delays are randomised (see breakwater's `Jitter`).
   * @default 'full'
   */
  readonly jitter?: Jitter | undefined
  /**
   * The random source for jitter.
   * @default Math.random
   */
  readonly random?: RandomSource | undefined
  /**
   * Whether a failure is worth another attempt; `attempt` is the attempt that failed. One that
   * throws (as a `random` that throws) ends the retries: the step or compensation fails for good
   * at that attempt, and the saga's reason and timeline name the error it threw.
   * @default steps: isTransientFailure (timeouts, refused or reset connections,
   * 408/429/502/503/504, database deadlocks, serialization failures and busy locks);
   * compensations: always (a compensation must eventually succeed)
   */
  readonly shouldRetry?: ((error: unknown, attempt: number) => boolean) | undefined
  /**
   * The longest server-requested wait (`Retry-After`, an error's `retryAfterMs`) honoured, in
   * milliseconds.
   * @default 30_000
   */
  readonly maxRetryAfterMs?: number | undefined
}

/** What every step function (action, compensation, wait) is told about the saga. */
export interface SagaStepInfo<I, C> {
  /** The saga instance's id. */
  readonly sagaId: string
  /** The definition's name. */
  readonly saga: string
  /** The definition's version the instance runs on. */
  readonly version: number
  /** This step's name. */
  readonly step: string
  /** The saga's input, as given to `startSaga` (after a JSON round trip). */
  readonly input: I
  /** The context: the merged results of the steps before this one. Do not mutate it. */
  readonly context: Readonly<C>
  /** The worker's clock. */
  readonly clock: Clock
}

/** What a step's action (and compensation) receives. */
export interface StepContext<I, C> extends SagaStepInfo<I, C> {
  /**
   * 1 for the first attempt of this step (or compensation), 2 for the first retry, and so on.
   * An attempt whose worker died before recording its outcome counts.
   */
  readonly attempt: number
  /**
   * The deterministic idempotency key of this invocation: `${sagaId}:${step}` for the action
   * and `${sagaId}:${step}:compensate` for the compensation. It is the same on every attempt
   * and after a crash, so pass it to remote calls (`idempotencyKey` of breakwater's HTTP
   * client, `idempotent(key, ...)`) and a repeated attempt has no second effect.
   */
  readonly idempotencyKey: string
  /**
   * Aborts when the step's timeout elapses, or when the worker learns that its lease was taken
   * over (`SagaLeaseLostError`). Pass it to fetch, undici, pg. It does not abort on
   * `worker.stop()`, which waits for the running step to end, unless `stop({ timeoutMs })`
   * gives up waiting first (then it aborts with `AbortedError`, and the step's outcome is not
   * recorded): give a step that may hang a `timeoutMs`.
   */
  readonly signal: AbortSignal
  /**
   * Registers work that runs inside the transaction that records this step's outcome, after
   * the fenced state write succeeded: local writes (an outbox row, a business row) commit
   * exactly when the step is recorded as done, and not at all when the lease was lost. Runs
   * only when the attempt succeeds. Work that throws rolls that transaction back: nothing is
   * recorded and the attempt fails with its error (the step's `retry`, or `compensationRetry`,
   * decides what next). The action had returned, so its effect stands: the step is marked
   * `outcomeUnknown` (its compensation runs if the saga compensates from it), and a retry
   * calls the action again, with the same idempotency key. Keep it to local statements: on SQLite the transaction holds the one
   * writer while it runs, so every other write (lease renewals included) waits for it; see
   * `SagaWorkerOptions.renewIntervalMs` for the bound. All of a step's work together is
   * bounded by `SagaWorkerOptions.atCommitTimeoutMs`; the work's second argument is a signal
   * that aborts when that bound elapses (with the `SagaAtCommitTimeoutError`) or when the
   * worker gives up on the run (`stop({ timeoutMs })`, with `AbortedError`; a lost lease, with
   * `SagaLeaseLostError`): pass it on to what the work waits for, since its transaction is
   * being rolled back and nothing it does after is kept. Register work before the step's
   * function settles: a call once it has returned, thrown or been cut off at its time limit
   * (from a callback it did not await) throws `InvalidOptionError` naming `atCommit`, since that
   * work could never run (it used to be accepted and dropped).
   */
  atCommit(work: AtCommitWork): void
}

/**
 * Work given to {@link StepContext.atCommit}: runs in the transaction `tx` that records the step;
 * `signal` aborts when the work is cut off (see `atCommit`).
 * @example
 * const work: AtCommitWork = async (tx, signal) => {
 *   signal.throwIfAborted()
 *   await tx.query('INSERT INTO audit (id) VALUES ($1)', ['a1'])
 * }
 */
export type AtCommitWork = (tx: SqlTransaction, signal: AbortSignal) => Promise<void>

/** What a compensation receives: a step context plus why the saga is compensating. */
export interface CompensationContext<I, C> extends StepContext<I, C> {
  /** Why the saga compensates (the failed step and its error, or the cancel reason). */
  readonly reason: string
}

/**
 * The context type after a step that returned `Out`: a plain-object result is merged into the
 * context; `void`/`undefined` leave it unchanged.
 */
// biome-ignore lint/suspicious/noConfusingVoidType: an action that returns nothing is typed void
export type MergeContext<C, Out> = [Out] extends [undefined | null | void]
  ? C
  : [unknown] extends [Out]
    ? C
    : Out extends object
      ? C & Out
      : C

/** A step that does something (usually a call to another service) and may be compensated. */
export interface ActionStep<I, C, Out> {
  /**
   * The step's name: letters, digits, `.`, `_`, `-`, starting with a letter or a digit; up to 40
   * characters; unique in the saga. Compared exactly, case included (`Reserve` and `reserve` are
   * two steps): nothing stores or looks a step name up without its case (see docs/saga.md).
   */
  readonly name: string
  /**
   * The work. Its result must survive a JSON round trip; a plain-object result is merged into
   * the context the next steps see. Throwing fails the attempt.
   */
  readonly action: (ctx: StepContext<I, C>) => Promise<Out> | Out
  /**
   * Undoes the action after a later step failed for good (or the saga was cancelled), retried
   * with `compensationRetry` until it succeeds or parks the saga as `failed`. Must be safe to
   * repeat (use `ctx.idempotencyKey`). It runs when the action completed, and also, first,
   * when an attempt of the action ended without a known outcome (its worker died or lost its
   * lease during it, or the runner cut it off at `timeoutMs`, maybe after the effect), or
   * returned but could not be recorded (its `atCommit` work failed or timed out, or its result
   * is not JSON), and the saga compensates: then the step's result is not in the context
   * (never committed; hence `Partial`): find the effect by the action's idempotency key
   * (`${ctx.sagaId}:${ctx.step}`), and do nothing when there is none. An action that only ever failed by throwing (its own timeouts and aborted
   * calls included) is not compensated: throw only once nothing is left to undo.
   * @default none: the step is skipped when compensating
   */
  readonly compensation?:
    | ((ctx: CompensationContext<I, MergeContext<C, Partial<Out>>>) => Promise<void> | void)
    | undefined
  /**
   * Retry of failed attempts; delays are persisted, not slept through.
   * @default { maxAttempts: 3, baseDelayMs: 100, shouldRetry: isTransientFailure }
   */
  readonly retry?: SagaRetryOptions | undefined
  /**
   * The time limit of one attempt, in milliseconds: `ctx.signal` aborts and the attempt fails
   * with `TimeoutError` (retryable). The attempt is abandoned, not known to have failed, so the
   * step is marked `outcomeUnknown` and its `compensation` runs if the saga compensates from it.
   * @default none
   */
  readonly timeoutMs?: number | undefined
  /**
   * Makes the declaration fail unless a `compensation` is given: mark steps whose effect must
   * be undone if a later step fails.
   * @default false
   */
  readonly compensationRequired?: boolean | undefined
  /**
   * Retry of the compensation. When its attempts are spent the saga is parked as `failed`
   * with the reason, for a person to look at (`breakwater saga retry` resumes it). Only with a
   * `compensation`: refused on a step without one (it would set nothing).
   * @default { maxAttempts: 10, baseDelayMs: 500, maxDelayMs: 60_000, shouldRetry: always }
   */
  readonly compensationRetry?: SagaRetryOptions | undefined
  /**
   * The time limit of one compensation attempt, in milliseconds. Only with a `compensation`:
   * refused on a step without one.
   * @default the step's timeoutMs
   */
  readonly compensationTimeoutMs?: number | undefined
  readonly callTimeoutMs?: never | undefined
  readonly sleepMs?: never | undefined
  readonly waitUntil?: never | undefined
  readonly awaitReply?: never | undefined
}

/**
 * A step that waits: for a fixed time (`sleepMs`) or until a point in time (`waitUntil`). The
 * wake-up time is computed once and persisted, so the wait survives restarts and fires once.
 */
export interface WaitStep<I, C> {
  /** The step's name (unique in the saga). */
  readonly name: string
  /**
   * How long to wait, in milliseconds from when the step is reached: an integer up to
   * 8.64e15 (Date's range). A sleep that would end past the latest Date fails the step with
   * `InvalidOptionError` when reached.
   */
  readonly sleepMs?: number | undefined
  /** When to continue (epoch milliseconds on the worker's clock), computed when reached. */
  readonly waitUntil?: ((ctx: SagaStepInfo<I, C>) => number | Promise<number>) | undefined
  /**
   * The time limit of one call of `waitUntil`, in milliseconds (only with `waitUntil`). A call
   * still running then is abandoned and fails the attempt with `TimeoutError` (retryable), so
   * a hung function cannot hold the saga's lease.
   * @default 30_000 ({@link defaultCallTimeoutMs})
   */
  readonly callTimeoutMs?: number | undefined
  readonly action?: never | undefined
  readonly compensation?: never | undefined
  readonly awaitReply?: never | undefined
}

/** How a {@link ReplyStep} waits for its reply. */
export interface AwaitReplyOptions<I, C, Out> {
  /** How long to wait for the reply after the command committed, in milliseconds. */
  readonly timeoutMs: number
  /**
   * Turns the reply into the step's result (merged into the context like an action's). Throw
   * to fail the step (for example on a negative reply); the step's `retry` decides what next.
   * @default the reply itself, when it is a plain object
   */
  readonly onReply?: ((reply: unknown, ctx: SagaStepInfo<I, C>) => Out | Promise<Out>) | undefined
}

/**
 * A step that sends a command and waits for a reply message correlated by saga id (command /
 * reply over a broker). `send` runs inside the transaction that records that the step waits, so
 * a command written to the outbox there (`outbox.enqueue(tx, ...)`) commits with the state
 * change. The reply arrives through `deliverReply(db, sagaId, step, reply)` (or
 * `sagaReplyHandler`). A timeout fails the attempt with `SagaReplyTimeoutError` (retryable:
 * the command is sent again with the same idempotency key).
 */
export interface ReplyStep<I, C, Out> {
  /** The step's name (unique in the saga). */
  readonly name: string
  /** Writes the command (usually `outbox.enqueue(tx, ...)`); runs in the state transaction. */
  readonly send: (ctx: StepContext<I, C>, tx: SqlTransaction) => Promise<void> | void
  /** How the reply is awaited. */
  readonly awaitReply: AwaitReplyOptions<I, C, Out>
  /**
   * Undoes the step. It also runs when the command was sent and no reply was read (a cancel,
   * a last reply timeout): the other service may have acted, or not. Then the step's result is
   * not in the context (hence `Partial`): find the effect by the command's idempotency key
   * (`${ctx.sagaId}:${ctx.step}`), and do nothing when there is none.
   */
  readonly compensation?:
    | ((ctx: CompensationContext<I, MergeContext<C, Partial<Out>>>) => Promise<void> | void)
    | undefined
  /** As for an action step; a reply timeout is retryable. */
  readonly retry?: SagaRetryOptions | undefined
  /** As for an action step. */
  readonly compensationRequired?: boolean | undefined
  /** As for an action step. */
  readonly compensationRetry?: SagaRetryOptions | undefined
  /** As for an action step. */
  readonly compensationTimeoutMs?: number | undefined
  /**
   * The time limit of one call of `send` and of one call of `awaitReply.onReply`, in
   * milliseconds. A call still running then is abandoned and fails the attempt with
   * `TimeoutError` (retryable): `send`'s transaction is rolled back, so nothing is sent; a
   * reply `onReply` did not finish with is used up, as a refused one. Without it a hung
   * function held the saga's lease (renewed) for ever.
   * @default 30_000 ({@link defaultCallTimeoutMs})
   */
  readonly callTimeoutMs?: number | undefined
  readonly action?: never | undefined
  readonly sleepMs?: never | undefined
  readonly waitUntil?: never | undefined
}

/** Any step of a saga. */
export type SagaStep<I, C, Out> = ActionStep<I, C, Out> | WaitStep<I, C> | ReplyStep<I, C, Out>

/** The parts of a saga declaration besides its steps. */
export interface SagaDeclaration<I> {
  /**
   * The saga's name: letters, digits, `.`, `_`, `-`, starting with a letter or a digit (up to
   * 100 characters). Together with `version` it selects the definition an instance runs on.
   */
  readonly name: string
  /**
   * The definition's version, an integer >= 1. Instances started on version n finish on
   * version n: keep registering the old definition with the workers until its instances are
   * done.
   */
  readonly version: number
  /**
   * Validates (and types) the input given to `startSaga`; throw to refuse it. It must return
   * the input itself: a promise (an async parser) is refused with `InvalidOptionError`.
   * @default none: the input is taken as it is
   */
  readonly input?: ((raw: unknown) => I) | undefined
}

/**
 * A declared saga: the value `defineSaga` returns, handed to `startSaga` and to workers. The
 * type parameters carry the input and the final context type.
 */
export interface SagaDefinition<I = unknown, C = Record<string, unknown>> {
  /** The saga's name. */
  readonly name: string
  /** The definition's version. */
  readonly version: number
  /** `name@version`: what the database stores and workers select on. */
  readonly key: string
  /** The step names, in order. */
  readonly stepNames: readonly string[]
  /** Phantom field carrying the input and context types; always undefined. */
  readonly types?: { readonly input: I; readonly context: C }
}

/** A validated retry setting. */
export interface CompiledRetry {
  readonly maxAttempts: number
  readonly backoff: Backoff
  readonly shouldRetry: (error: unknown, attempt: number) => boolean
  readonly maxRetryAfterMs: number
}

type AnyFunction = (...args: never[]) => unknown

/** A validated step, as the runner uses it. */
export interface CompiledStep {
  readonly index: number
  readonly name: string
  readonly kind: 'action' | 'wait' | 'reply'
  readonly action: AnyFunction | undefined
  readonly send: AnyFunction | undefined
  readonly replyTimeoutMs: number
  readonly onReply: AnyFunction | undefined
  readonly compensation: AnyFunction | undefined
  readonly retry: CompiledRetry
  readonly timeoutMs: number | undefined
  readonly compensationRetry: CompiledRetry
  readonly compensationTimeoutMs: number | undefined
  readonly sleepMs: number | undefined
  readonly waitUntil: AnyFunction | undefined
  /** The time limit of one call of send, onReply or waitUntil (0 for steps without them). */
  readonly callTimeoutMs: number
}

/** A validated definition. */
export interface CompiledSaga {
  readonly name: string
  readonly version: number
  readonly key: string
  readonly steps: readonly CompiledStep[]
  readonly parseInput: ((raw: unknown) => unknown) | undefined
}

const compiledSagas = new WeakMap<object, CompiledSaga>()

/** The validated form of a definition; throws for anything `defineSaga` did not return. */
export function compiledSaga(definition: unknown, option = 'definition'): CompiledSaga {
  const compiled =
    typeof definition === 'object' && definition !== null
      ? compiledSagas.get(definition)
      : undefined
  if (compiled === undefined) {
    // Definitions are recognised by identity: one made by a second copy of the package (an
    // app's own node_modules/breakwater loaded by a globally installed CLI) has every field
    // and is still refused, which "expected a definition from defineSaga()" did not explain.
    const looksDefined =
      typeof definition === 'object' &&
      definition !== null &&
      typeof (definition as { key?: unknown }).key === 'string' &&
      Array.isArray((definition as { stepNames?: unknown }).stepNames)
    throw new InvalidOptionError(
      option,
      looksDefined
        ? 'a saga definition from this copy of breakwater’s defineSaga() (this one was made by another copy of breakwater: import defineSaga from the breakwater that runs the workers)'
        : 'a saga definition from defineSaga()',
      definition,
    )
  }
  return compiled
}

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
// What namePattern takes, as its refusals say it: listing only the characters left `_a` or
// `__proto__` (each character allowed) refused without saying what was wrong.
const nameRule = 'letters, digits, ".", "_" and "-", starting with a letter or a digit'
/** Longest step name: keeps `${sagaId}:${step}:compensate` within 255 characters. */
export const maxStepNameLength = 40
/** Longest saga id. */
export const maxSagaIdLength = 200
/**
 * The latest time a Date can hold, in epoch milliseconds: the bound of every persisted time
 * (also exact as a double, and within PostgreSQL's BIGINT).
 */
export const maxEpochMs = 8_640_000_000_000_000

/**
 * The default time limit, in milliseconds, of one call of a reply step's `send` and
 * `awaitReply.onReply` and of a wait step's `waitUntil` (the step option `callTimeoutMs`).
 */
export const defaultCallTimeoutMs = 30_000

type E = unknown
type M<C, Out> = MergeContext<C, Out>

/**
 * Declares a saga: ordered steps, each with an action, an optional compensation, its own retry
 * policy and timeout. Each action's plain-object result is merged into the context that later
 * steps (and compensations) see; with up to 8 steps the context is typed step by step. Bad
 * declarations (empty steps, duplicate step names, a missing compensation where
 * `compensationRequired` is set, `compensationRetry` or `compensationTimeoutMs` without a
 * compensation, a bad name or version) throw `InvalidOptionError` here, and so does an unknown
 * (misspelt) field of the declaration, a step, its `awaitReply` or a `retry`, and any of them
 * given as `null` (only undefined means the default).
 *
 * @example
 * ```ts
 * const orderSaga = defineSaga({
 *   name: 'order', version: 1,
 *   input: (raw) => raw as { orderId: string; amount: number },
 *   steps: [
 *     { name: 'reserve', action: async (ctx) => ({ reservationId: await reserve(ctx.input, ctx.idempotencyKey) }),
 *       compensation: async (ctx) => release(ctx.input.orderId, ctx.idempotencyKey) },
 *     { name: 'charge', action: async (ctx) => ({ chargeId: await charge(ctx.input.amount, ctx.idempotencyKey) }),
 *       compensation: async (ctx) => refund(ctx.input.orderId, ctx.idempotencyKey), compensationRequired: true },
 *     { name: 'ship', action: async (ctx) => ({ shipmentId: await ship(ctx.input.orderId, ctx.idempotencyKey) }) },
 *   ],
 * })
 * ```
 */
export function defineSaga<I, A>(
  definition: SagaDeclaration<I> & { readonly steps: readonly [SagaStep<I, E, A>] },
): SagaDefinition<I, M<E, A>>
export function defineSaga<I, A, B>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [SagaStep<I, E, A>, SagaStep<I, M<E, A>, B>]
  },
): SagaDefinition<I, M<M<E, A>, B>>
export function defineSaga<I, A, B, C>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
    ]
  },
): SagaDefinition<I, M<M<M<E, A>, B>, C>>
export function defineSaga<I, A, B, C, D>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
      SagaStep<I, M<M<M<E, A>, B>, C>, D>,
    ]
  },
): SagaDefinition<I, M<M<M<M<E, A>, B>, C>, D>>
export function defineSaga<I, A, B, C, D, F>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
      SagaStep<I, M<M<M<E, A>, B>, C>, D>,
      SagaStep<I, M<M<M<M<E, A>, B>, C>, D>, F>,
    ]
  },
): SagaDefinition<I, M<M<M<M<M<E, A>, B>, C>, D>, F>>
export function defineSaga<I, A, B, C, D, F, G>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
      SagaStep<I, M<M<M<E, A>, B>, C>, D>,
      SagaStep<I, M<M<M<M<E, A>, B>, C>, D>, F>,
      SagaStep<I, M<M<M<M<M<E, A>, B>, C>, D>, F>, G>,
    ]
  },
): SagaDefinition<I, M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>>
export function defineSaga<I, A, B, C, D, F, G, H>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
      SagaStep<I, M<M<M<E, A>, B>, C>, D>,
      SagaStep<I, M<M<M<M<E, A>, B>, C>, D>, F>,
      SagaStep<I, M<M<M<M<M<E, A>, B>, C>, D>, F>, G>,
      SagaStep<I, M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>, H>,
    ]
  },
): SagaDefinition<I, M<M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>, H>>
export function defineSaga<I, A, B, C, D, F, G, H, J>(
  definition: SagaDeclaration<I> & {
    readonly steps: readonly [
      SagaStep<I, E, A>,
      SagaStep<I, M<E, A>, B>,
      SagaStep<I, M<M<E, A>, B>, C>,
      SagaStep<I, M<M<M<E, A>, B>, C>, D>,
      SagaStep<I, M<M<M<M<E, A>, B>, C>, D>, F>,
      SagaStep<I, M<M<M<M<M<E, A>, B>, C>, D>, F>, G>,
      SagaStep<I, M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>, H>,
      SagaStep<I, M<M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>, H>, J>,
    ]
  },
): SagaDefinition<I, M<M<M<M<M<M<M<M<E, A>, B>, C>, D>, F>, G>, H>, J>>
export function defineSaga<I, C extends object = Record<string, unknown>>(
  definition: SagaDeclaration<I> & {
    // biome-ignore lint/suspicious/noConfusingVoidType: an action that returns nothing is typed void
    readonly steps: readonly SagaStep<I, Partial<C>, Partial<C> | undefined | void>[]
  },
): SagaDefinition<I, Partial<C>>
export function defineSaga(
  definition: SagaDeclaration<unknown> & { readonly steps: readonly unknown[] },
): SagaDefinition {
  const compiled = compile(definition)
  const result: SagaDefinition = Object.freeze({
    name: compiled.name,
    version: compiled.version,
    key: compiled.key,
    stepNames: Object.freeze(compiled.steps.map((s) => s.name)),
  })
  compiledSagas.set(result, compiled)
  return result
}

function compile(raw: unknown): CompiledSaga {
  const definition = checkObject('saga', raw)
  const name = definition.name
  if (typeof name !== 'string' || name.length > 100 || !namePattern.test(name)) {
    throw new InvalidOptionError(
      'saga.name',
      `a name of ${nameRule} (at most 100 characters)`,
      name,
    )
  }
  const where = `saga "${name}"`
  // A misspelt field (`inputs`) was dropped without a word: the input went unvalidated.
  checkSagaOptions(where, definition, declarationFields)
  const version = checkInteger(`${where}.version`, definition.version, 1, 1_000_000)
  const parseInput =
    definition.input === undefined
      ? undefined
      : checkFunction<(raw: unknown) => unknown>(`${where}.input`, definition.input)
  const steps = definition.steps
  if (!Array.isArray(steps) || steps.length === 0) {
    throw new InvalidOptionError(`${where}.steps`, 'a non-empty array of steps', steps)
  }
  refuseHoles(`${where}.steps`, steps)
  // Exact names, case included: every place a step name is stored or matched (the steps JSON,
  // the replies' key, the saga-step header, the idempotency key) compares it exactly.
  const seen = new Set<string>()
  const compiledSteps = steps.map((step: unknown, index) => {
    const compiledStep = compileStep(`${where}.steps[${index}]`, step, index)
    if (seen.has(compiledStep.name)) {
      throw new InvalidOptionError(
        `${where}.steps[${index}].name`,
        'a step name used once in the saga (duplicate step name)',
        compiledStep.name,
      )
    }
    seen.add(compiledStep.name)
    return compiledStep
  })
  return { name, version, key: `${name}@${version}`, steps: compiledSteps, parseInput }
}

function compileStep(at: string, raw: unknown, index: number): CompiledStep {
  const step = checkObject(at, raw)
  const name = step.name
  if (typeof name !== 'string' || name.length > maxStepNameLength || !namePattern.test(name)) {
    throw new InvalidOptionError(
      `${at}.name`,
      `a step name of ${nameRule} (at most ${maxStepNameLength} characters)`,
      name,
    )
  }
  const named = `${at.slice(0, at.lastIndexOf('.'))}.steps["${name}"]`
  // A misspelt field was dropped silently: `compensaton` left the step without compensation.
  checkSagaOptions(named, step, stepFields)
  const kinds = (['action', 'sleepMs', 'waitUntil', 'awaitReply'] as const).filter(
    (k) => step[k] !== undefined,
  )
  const isWait = kinds.includes('sleepMs') || kinds.includes('waitUntil')
  if (kinds.length !== 1) {
    throw new InvalidOptionError(
      named,
      'exactly one of action, sleepMs, waitUntil or awaitReply (with send)',
      kinds.length === 0 ? step : kinds.join(' and '),
    )
  }
  const kind = isWait ? 'wait' : kinds[0] === 'awaitReply' ? 'reply' : 'action'
  if (kind === 'wait') {
    for (const field of [
      'compensation',
      'retry',
      'timeoutMs',
      'compensationRequired',
      'compensationRetry',
      'compensationTimeoutMs',
      'send',
    ]) {
      if (step[field] !== undefined)
        throw new InvalidOptionError(`${named}.${field}`, 'nothing on a wait step', step[field])
    }
  }
  const callsFunction = kind === 'reply' || step.waitUntil !== undefined
  if (!callsFunction && step.callTimeoutMs !== undefined) {
    throw new InvalidOptionError(
      `${named}.callTimeoutMs`,
      kind === 'action'
        ? 'nothing on an action step (the time limit of its action is timeoutMs)'
        : 'nothing on a sleepMs step (it calls no function)',
      step.callTimeoutMs,
    )
  }
  const callTimeoutMs = callsFunction
    ? checkInteger(
        `${named}.callTimeoutMs`,
        step.callTimeoutMs ?? defaultCallTimeoutMs,
        1,
        maxTimerDelayMs,
      )
    : 0
  if (kind === 'reply' && step.timeoutMs !== undefined) {
    throw new InvalidOptionError(
      `${named}.timeoutMs`,
      'nothing on a reply step (the time it waits is awaitReply.timeoutMs)',
      step.timeoutMs,
    )
  }
  const compensation =
    step.compensation === undefined
      ? undefined
      : checkFunction<AnyFunction>(`${named}.compensation`, step.compensation)
  // Dead settings without a compensation to retry or time: most likely it was forgotten.
  if (compensation === undefined) {
    for (const field of ['compensationRetry', 'compensationTimeoutMs']) {
      if (step[field] !== undefined)
        throw new InvalidOptionError(
          `${named}.${field}`,
          'nothing on a step without a compensation (give the step its compensation, or drop the field)',
          step[field],
        )
    }
  }
  const required = step.compensationRequired
  if (required !== undefined && typeof required !== 'boolean') {
    throw new InvalidOptionError(`${named}.compensationRequired`, 'a boolean', required)
  }
  if (required === true && compensation === undefined) {
    throw new InvalidOptionError(
      `${named}.compensation`,
      'a function (the step sets compensationRequired: true)',
      undefined,
    )
  }
  const timeoutMs =
    step.timeoutMs === undefined
      ? undefined
      : checkInteger(`${named}.timeoutMs`, step.timeoutMs, 1, maxTimerDelayMs)
  const compensationTimeoutMs =
    step.compensationTimeoutMs === undefined
      ? timeoutMs
      : checkInteger(
          `${named}.compensationTimeoutMs`,
          step.compensationTimeoutMs,
          1,
          maxTimerDelayMs,
        )
  let replyTimeoutMs = 0
  let onReply: AnyFunction | undefined
  let send: AnyFunction | undefined
  if (kind === 'reply') {
    const awaitReply = checkObject(`${named}.awaitReply`, step.awaitReply)
    checkSagaOptions(`${named}.awaitReply`, awaitReply, awaitReplyFields)
    replyTimeoutMs = checkInteger(
      `${named}.awaitReply.timeoutMs`,
      awaitReply.timeoutMs,
      1,
      maxTimerDelayMs,
    )
    if (awaitReply.onReply !== undefined)
      onReply = checkFunction<AnyFunction>(`${named}.awaitReply.onReply`, awaitReply.onReply)
    send = checkFunction<AnyFunction>(`${named}.send`, step.send)
  } else if (step.send !== undefined) {
    throw new InvalidOptionError(`${named}.send`, 'nothing without awaitReply', step.send)
  }
  return {
    index,
    name,
    kind,
    action:
      kind === 'action' ? checkFunction<AnyFunction>(`${named}.action`, step.action) : undefined,
    send,
    replyTimeoutMs,
    onReply,
    compensation,
    retry: compileRetry(`${named}.retry`, step.retry, stepRetryDefaults),
    timeoutMs,
    compensationRetry: compileRetry(
      `${named}.compensationRetry`,
      step.compensationRetry,
      compensationRetryDefaults,
    ),
    compensationTimeoutMs,
    sleepMs:
      step.sleepMs === undefined
        ? undefined
        : // A longer sleep would end past any time a Date (or the saga's columns) can hold.
          checkInteger(`${named}.sleepMs`, step.sleepMs, 0, maxEpochMs),
    waitUntil:
      step.waitUntil === undefined
        ? undefined
        : checkFunction<AnyFunction>(`${named}.waitUntil`, step.waitUntil),
    callTimeoutMs,
  }
}

// Every field of every step kind: a field of another kind is refused by compileStep with a
// message of its own (`nothing on a wait step`), an unknown one here.
const stepFields = optionKeys<SagaStep<unknown, unknown, unknown>>({
  name: true,
  action: true,
  compensation: true,
  retry: true,
  timeoutMs: true,
  compensationRequired: true,
  compensationRetry: true,
  compensationTimeoutMs: true,
  sleepMs: true,
  waitUntil: true,
  awaitReply: true,
  send: true,
  callTimeoutMs: true,
})

const awaitReplyFields = optionKeys<AwaitReplyOptions<unknown, unknown, unknown>>({
  timeoutMs: true,
  onReply: true,
})

const declarationFields = optionKeys<SagaDeclaration<unknown> & { readonly steps: unknown }>({
  name: true,
  version: true,
  input: true,
  steps: true,
})

interface RetryDefaults {
  readonly maxAttempts: number
  readonly baseDelayMs: number
  readonly maxDelayMs: number
  readonly shouldRetry: (error: unknown, attempt: number) => boolean
}

const stepRetryDefaults: RetryDefaults = {
  maxAttempts: 3,
  baseDelayMs: 100,
  maxDelayMs: 30_000,
  shouldRetry: isTransientFailure,
}

const compensationRetryDefaults: RetryDefaults = {
  maxAttempts: 10,
  baseDelayMs: 500,
  maxDelayMs: 60_000,
  shouldRetry: () => true,
}

const retryFields = optionKeys<SagaRetryOptions>({
  maxAttempts: true,
  baseDelayMs: true,
  factor: true,
  maxDelayMs: true,
  jitter: true,
  random: true,
  shouldRetry: true,
  maxRetryAfterMs: true,
})

function compileRetry(at: string, raw: unknown, defaults: RetryDefaults): CompiledRetry {
  const options = raw === undefined ? {} : checkObject(at, raw)
  // A misspelt option (`maxAttemps`) was dropped: the step retried with the default.
  checkSagaOptions(at, options, retryFields)
  const maxAttempts = checkInteger(
    `${at}.maxAttempts`,
    options.maxAttempts ?? defaults.maxAttempts,
    1,
  )
  const baseDelayMs = checkNumber(
    `${at}.baseDelayMs`,
    options.baseDelayMs ?? defaults.baseDelayMs,
    0,
    maxTimerDelayMs,
  )
  const maxDelayMs = checkNumber(
    `${at}.maxDelayMs`,
    options.maxDelayMs ?? Math.max(defaults.maxDelayMs, baseDelayMs),
    baseDelayMs,
    maxTimerDelayMs,
  )
  const factor = checkNumber(`${at}.factor`, options.factor ?? 2, 1, 1_000)
  const shouldRetry =
    options.shouldRetry === undefined
      ? defaults.shouldRetry
      : checkFunction<(error: unknown, attempt: number) => boolean>(
          `${at}.shouldRetry`,
          options.shouldRetry,
        )
  const maxRetryAfterMs = checkNumber(
    `${at}.maxRetryAfterMs`,
    options.maxRetryAfterMs ?? 30_000,
    0,
    maxTimerDelayMs,
  )
  let backoff: Backoff
  try {
    backoff = exponentialBackoff({
      baseDelayMs,
      maxDelayMs,
      factor,
      ...(options.jitter === undefined ? {} : { jitter: options.jitter as Jitter }),
      ...(options.random === undefined ? {} : { random: options.random as RandomSource }),
    })
  } catch (error) {
    // Only jitter and random are left unchecked above; name them under this step, with what
    // the policy takes (the values jitter may be), not a bare "a valid value".
    if (error instanceof InvalidOptionError) {
      const field = error.option.slice(error.option.indexOf('.') + 1)
      throw new InvalidOptionError(`${at}.${field}`, error.expected, error.value)
    }
    throw error
  }
  return { maxAttempts, backoff, shouldRetry, maxRetryAfterMs }
}
