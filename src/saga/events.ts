import { type Channel, channel } from 'node:diagnostics_channel'
import { otelInstruments } from '../core/otel-instruments.js'
import type { ErrorInfo } from './state.js'

/** What a saga worker reports. */
export type SagaEventType =
  /** The worker took instances (leases) from the database. */
  | 'claimed'
  /** An instance whose previous worker died (its lease expired) was taken over. */
  | 'recovered'
  /** An action (or a reply step's send) is about to run. */
  | 'step-started'
  /** A step's result was recorded. */
  | 'step-completed'
  /** An attempt failed; `retryAt` when another follows, else the saga compensates. */
  | 'step-failed'
  /** The saga waits: a timer (`sleepMs`/`waitUntil`) or a reply, until `retryAt`. */
  | 'step-waiting'
  /** A step failed for good (or a cancel was requested): compensation begins. */
  | 'compensating'
  /** A compensation is about to run. */
  | 'compensation-started'
  /** A compensation was recorded as done. */
  | 'compensation-completed'
  /** A compensation attempt failed; `retryAt` when another follows, else the saga parks. */
  | 'compensation-failed'
  /** Every step completed. */
  | 'completed'
  /** Every completed step was compensated after a failure. */
  | 'compensated'
  /** Every completed step was compensated after a cancel request. */
  | 'cancelled'
  /** A compensation kept failing: the saga is parked as `failed` with `reason`. */
  | 'parked'
  /** A write was refused by the fencing token: another worker owns the instance now. */
  | 'lease-lost'
  /** The worker gave an instance back (stopping) for another worker to continue. */
  | 'released'
  /**
   * `stop({ timeoutMs })` stopped waiting for the instance's step: nothing more is written for
   * it, and its lease is left to run out for another worker to resume it.
   */
  | 'abandoned'
  /**
   * Instances of a definition (`saga`, `version`) this worker does not have have been due for
   * at least `missingDefinitionCheckIntervalMs` with no worker running them: `count` of them.
   * They are left alone (a worker that has the definition runs them); until one does, they stay
   * `running` for ever. Reported at most once per interval per definition.
   */
  | 'definition-missing'
  /**
   * The database failed a claim, renewal or state write, or a claimed instance's stored state
   * cannot be read or its step index names none of its steps (`sagaId`, `STORED_DATA_INVALID`:
   * its state is left as it is, and it is held for a minute before it is tried again); the
   * worker carries on. `phase` names what failed.
   */
  | 'error'

/**
 * One event of a saga worker: plain data, safe to `JSON.stringify` as a log line. Fields that
 * do not apply to the event are absent.
 */
export interface SagaEvent {
  /** What happened. */
  readonly type: SagaEventType
  /** When (epoch ms on the worker's clock). */
  readonly at: number
  /** The worker's id. */
  readonly worker: string
  /** The saga instance. */
  readonly sagaId?: string
  /** The definition's name. */
  readonly saga?: string
  /** The definition's version. */
  readonly version?: number
  /** The step. */
  readonly step?: string
  /** The attempt (of the step or compensation). */
  readonly attempt?: number
  /** How long the action or compensation ran, in ms. */
  readonly durationMs?: number
  /**
   * When the next attempt (or the wake-up) is due, epoch ms; for an `error` of phase `run`,
   * when the state write that failed is written again (absent: the run was given up).
   */
  readonly retryAt?: number
  /** The failure. */
  readonly error?: ErrorInfo
  /**
   * Why the saga compensates or was parked; for `lease-lost`, how the loss showed:
   * `write-refused` (a fenced state write matched no row) or `renewal-refused`.
   */
  readonly reason?: string
  /** How many instances a claim took; for `definition-missing`, how many are waiting. */
  readonly count?: number
  /** For `recovered`: the worker whose lease expired. */
  readonly previousOwner?: string
  /** For `recovered`: milliseconds from the old lease's expiry to the takeover. */
  readonly recoveryMs?: number
  /** For `error`: what failed (see {@link SagaErrorPhase}). */
  readonly phase?: SagaErrorPhase
}

/**
 * What an `error` event's failure stopped: the database's own error (a lock timeout, a lost
 * connection) says nothing of which statement it ended.
 * - `claim`: a claim of due instances (retried after a backoff), or a claimed instance that
 *   cannot be run (`sagaId`, `STORED_DATA_INVALID`);
 * - `renew`: the renewal of the leases of the instances in hand (retried at the next
 *   interval; a lease that runs out meanwhile is taken over by another worker);
 * - `run`: an instance's run (`sagaId`, `step`), mostly the write of its state. With
 *   `retryAt`, the write failed in a way known to have committed nothing (a lock timeout, a
 *   deadlock, a serialization failure, SQLite's writer busy) and is written again then, in
 *   place; without, the run is given up and the instance resumed from its stored state once
 *   its lease runs out, its step run again;
 * - `hold`: the hold of an instance whose stored state cannot be read;
 * - `missing-definitions`: the look for instances of definitions no worker has;
 * - `listen`: the subscription to start notifications (polling still finds every saga).
 */
export type SagaErrorPhase = 'claim' | 'renew' | 'run' | 'hold' | 'missing-definitions' | 'listen'

/** In-process counters of a saga worker since it was created. */
export interface SagaWorkerMetrics {
  /** Instances claimed (each claim of an instance counts, takeovers included). */
  readonly claimed: number
  /** Instances taken over after their previous worker's lease expired. */
  readonly recovered: number
  /** Step attempts started. */
  readonly stepAttempts: number
  /** Steps recorded as completed. */
  readonly stepsCompleted: number
  /** Step attempts that failed. */
  readonly stepFailures: number
  /** Compensations recorded as done. */
  readonly compensations: number
  /** Compensation attempts that failed. */
  readonly compensationFailures: number
  /** Instances this worker finished as completed. */
  readonly completed: number
  /** ... as compensated. */
  readonly compensated: number
  /** ... as cancelled. */
  readonly cancelled: number
  /** Instances this worker parked as failed. */
  readonly parked: number
  /** Writes refused by fencing. */
  readonly leaseLost: number
  /** Database errors (claims, renewals, writes). */
  readonly errors: number
  /** Instances in hand right now. */
  readonly inFlight: number
}

/** The mutable counters behind {@link SagaWorkerMetrics}. */
export type MutableSagaMetrics = { -readonly [K in keyof SagaWorkerMetrics]: number }

/** Fresh zeroed counters. */
export function emptyMetrics(): MutableSagaMetrics {
  return {
    claimed: 0,
    recovered: 0,
    stepAttempts: 0,
    stepsCompleted: 0,
    stepFailures: 0,
    compensations: 0,
    compensationFailures: 0,
    completed: 0,
    compensated: 0,
    cancelled: 0,
    parked: 0,
    leaseLost: 0,
    errors: 0,
    inFlight: 0,
  }
}

interface Counter {
  add(value: number, attributes?: Record<string, string>): void
}
interface Gauge {
  record(value: number, attributes?: Record<string, string>): void
}
interface Histogram {
  record(value: number, attributes?: Record<string, string>): void
}

/** The OpenTelemetry instruments of saga workers. */
export interface SagaInstruments {
  /** `breakwater.saga.events`: every worker event, attributes `type` and `saga`. */
  readonly events: Counter
  /**
   * `breakwater.saga.step.duration`: action and compensation run time in seconds (unit `s`,
   * buckets in seconds), as OpenTelemetry's conventions and the relay's and proxy's duration
   * metrics have it.
   */
  readonly stepDuration: Histogram
  /**
   * `breakwater.saga.definition_missing.instances`: per `saga` and `version` a worker lacks, the
   * instances due with no worker running them, as of its last check (0 once none are left).
   */
  readonly missingDefinition: Gauge
}

/** Upper bounds (seconds) of the step duration buckets: a local write to a slow remote call. */
const stepDurationBuckets = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
]

/**
 * The saga worker's OpenTelemetry instruments: made on first use, not at import, and again for
 * a new global meter provider.
 */
export const sagaInstruments = otelInstruments(
  (meter): SagaInstruments => ({
    events: meter.createCounter('breakwater.saga.events', {
      description: 'Saga worker events (attribute type: step-completed, compensated, ...)',
    }),
    // Seconds: recorded in ms, it was exported to Prometheus as `..._milliseconds` and read
    // as seconds beside the relay's and proxy's latencies; the SDK's default buckets (0 to
    // 10 000) are made for ms, hence these.
    stepDuration: meter.createHistogram('breakwater.saga.step.duration', {
      description: 'Run time of saga actions and compensations',
      unit: 's',
      advice: { explicitBucketBoundaries: stepDurationBuckets },
    }),
    missingDefinition: meter.createGauge('breakwater.saga.definition_missing.instances', {
      description: 'Due saga instances of a definition (saga, version) the worker does not have',
      unit: '{instance}',
    }),
  }),
)

const channels = new Map<string, Channel>()

/** Publishes `event` on `breakwater:saga:<type>` when somebody subscribes. */
export function publishSagaEvent(event: SagaEvent): void {
  let ch = channels.get(event.type)
  if (ch === undefined) {
    ch = channel(`breakwater:saga:${event.type}`)
    channels.set(event.type, ch)
  }
  if (ch.hasSubscribers) ch.publish(event)
}
