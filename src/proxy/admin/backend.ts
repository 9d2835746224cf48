// What the admin API acts on. In a single process that is the runtime itself; in the
// multi-process mode it is the primary, which forwards each command to every worker over IPC
// and gathers their answers. The shapes are plain JSON so both fit.

import { BreakwaterError } from '../../core/errors.js'
import { redactSecrets } from '../../observability/redact.js'
import type { ConfigInvalidError } from '../config/errors.js'
import type {
  AdminConfig,
  ProxyConfig,
  RouteState,
  RouteTargetConfig,
  ServiceState,
  ShadowMismatch,
} from '../contracts.js'

/** One process's services. */
export interface WorkerServices {
  readonly pid: number
  readonly services: readonly ServiceState[]
  /**
   * Set (and `services` empty) for a worker of the multi-process mode that did not answer:
   * why (it did not in time, or it exited first).
   */
  readonly error?: string
}

/** One process's routes. */
export interface WorkerRoutes {
  readonly pid: number
  readonly routes: readonly RouteState[]
  /** As {@link WorkerServices.error}: set (and `routes` empty) for a worker that did not answer. */
  readonly error?: string
}

/**
 * A command some workers applied and others did not (they failed or did not answer). The
 * primary recorded the change (a restarted worker is given it); `failed` names the workers
 * that may still run without it. Code `PARTIALLY_APPLIED` (the admin API answers 502 with it);
 * retryable, as the commands are idempotent.
 */
export class PartiallyAppliedError extends BreakwaterError {
  constructor(
    readonly op: string,
    readonly applied: readonly number[],
    readonly failed: readonly { readonly pid: number; readonly error: string }[],
    /** For a reload: what it did in each worker asked (see {@link ReloadReport}). */
    readonly workers?: readonly WorkerReload[],
  ) {
    super(
      'PARTIALLY_APPLIED',
      `${op} applied by ${applied.length} worker(s) but not by ${failed
        .map((f) => `worker ${f.pid} (${f.error})`)
        .join(', ')}`,
      // Sending the command again brings the other workers in line.
      { retryable: true },
    )
  }
}

/** What a reload did in one worker of the multi-process mode. */
export interface WorkerReload {
  readonly pid: number
  /**
   * `applied`: it runs the new config. `refused`: it answered that it could not apply it (a
   * port in use, its own `startTimeoutMs` passing while a store opened), and runs the old one.
   * `no-answer`: no answer within the new config's `startTimeoutMs` plus the primary's margin,
   * or it exited first; what it runs is unknown.
   */
  readonly outcome: 'applied' | 'refused' | 'no-answer'
  /** Why it did not apply it: the worker's own reason, or what the primary saw. */
  readonly reason?: string
  /** Whether the primary is replacing it (a replacement starts on the config in force). */
  readonly replaced: boolean
}

/**
 * What a reload did, per worker (multi-process mode). When only some workers applied it,
 * {@link AdminBackend.reloadByWorker} rejects with PartiallyAppliedError carrying the same
 * `workers` instead.
 */
export interface ReloadReport {
  /**
   * Why the new config was refused (by the primary's validation, then no worker was asked; or
   * by every worker asked); undefined when it is in force.
   */
  readonly refused: ConfigInvalidError | undefined
  /** Each worker asked, in the order asked. */
  readonly workers: readonly WorkerReload[]
}

/** The operations behind the admin API. */
export interface AdminBackend {
  /** The config in force. */
  config(): Promise<ProxyConfig>
  /** Service state of every process. */
  services(): Promise<WorkerServices[]>
  /** Route state of every process. */
  routes(): Promise<WorkerRoutes[]>
  /** Switches a route in every process; rejects with InvalidOptionError for bad input. */
  switchRoute(route: string, targets: RouteTargetConfig[]): Promise<void>
  /** Puts a route back on its configured targets in every process. */
  resetRoute(route: string): Promise<void>
  /**
   * Reloads the config file in every process; resolves with the error when it was refused
   * (by the primary's validation, or by every worker). Rejects with PartiallyAppliedError when
   * only some workers applied it: the new config is then in force, and the workers that did
   * not apply it are being replaced (their replacements start from the file).
   */
  reload(): Promise<ConfigInvalidError | undefined>
  /**
   * As {@link AdminBackend.reload}, saying what the reload did in each worker (the
   * multi-process primary has it; `POST /admin/reload` then answers with `workers`).
   */
  reloadByWorker?(): Promise<ReloadReport>
  /** Isolates a service's breaker in every process. */
  isolate(service: string): Promise<void>
  /** Resets a service's breaker and ejections in every process. */
  reset(service: string): Promise<void>
  /** Prometheus text (labelled by worker in the multi-process mode). */
  metricsText(): Promise<string>
  /** Listeners bound, config loaded, not draining. */
  ready(): boolean
  /** Configured listeners that are not listening (named by /readyz); [] in the primary. */
  listenersDown(): readonly string[]
}

/**
 * The settings read at start only (`admin`, `workers`): a reload that changes them in the file
 * applies them at the next restart, so until then the process runs on these.
 */
export interface StartOnlySettings {
  readonly admin: AdminConfig | undefined
  readonly workers: number
}

/**
 * The config as the admin API shows it: the `services` map as an object, secrets as their
 * `{ env }` / `{ file }` references (the config never holds a secret value), and credentials
 * in URLs (an idempotency database URL) masked. `via` is `false` when no Via is added, as in
 * the YAML. Given `running` (the start-only settings the process started with), `admin` and
 * `workers` are those, and `pendingAtRestart` lists the file's values that differ from them:
 * a reload took them in, but they apply only at the next restart.
 */
export function configForDisplay(
  config: ProxyConfig,
  running?: StartOnlySettings,
): Record<string, unknown> {
  const pending: Record<string, unknown> = {}
  // Compared as JSON: the config holds plain data, and the reloaded copy is a new object.
  if (running !== undefined && JSON.stringify(running.admin) !== JSON.stringify(config.admin))
    pending.admin = config.admin ?? null
  if (running !== undefined && running.workers !== config.workers) pending.workers = config.workers
  return {
    services: Object.fromEntries(config.services),
    listeners: config.listeners,
    admin: running === undefined ? config.admin : running.admin,
    idempotency:
      config.idempotency === undefined ? undefined : { url: redactSecrets(config.idempotency.url) },
    accessLog: config.accessLog,
    deadlineHeader: config.deadlineHeader,
    via: config.via ?? false,
    drainTimeoutMs: config.drainTimeoutMs,
    startTimeoutMs: config.startTimeoutMs,
    workers: running === undefined ? config.workers : running.workers,
    ...(Object.keys(pending).length === 0 ? {} : { pendingAtRestart: pending }),
  }
}

/**
 * Adds the route counters of several processes: requests, shadow (compared, mismatches,
 * skipped, errors) and retry affinity counts are summed, the examples merged (latest last, at
 * most `keep`, or `keep(route)`: the route's `shadow.keepExamples`) and the learned noise
 * joined; targets and override taken from the first.
 */
export function mergeRoutes(
  workers: readonly WorkerRoutes[],
  keep: number | ((route: string) => number) = 50,
): RouteState[] {
  const keepOf = typeof keep === 'number' ? () => keep : keep
  const merged = new Map<string, RouteState>()
  for (const worker of workers) {
    for (const route of worker.routes) {
      const seen = merged.get(route.name)
      if (seen === undefined) {
        merged.set(route.name, route)
        continue
      }
      const requests: Record<string, number> = { ...seen.requestsByService }
      for (const [service, n] of Object.entries(route.requestsByService))
        requests[service] = (requests[service] ?? 0) + n
      let shadow = seen.shadow
      if (route.shadow !== undefined) {
        const examples: ShadowMismatch[] = [...(shadow?.examples ?? []), ...route.shadow.examples]
        examples.sort((a, b) => a.at - b.at)
        shadow = {
          compared: (shadow?.compared ?? 0) + route.shadow.compared,
          mismatches: (shadow?.mismatches ?? 0) + route.shadow.mismatches,
          // slice(-0) would keep them all.
          examples: examples.slice(examples.length - Math.min(keepOf(route.name), examples.length)),
          skipped: (shadow?.skipped ?? 0) + (route.shadow.skipped ?? 0),
          errors: (shadow?.errors ?? 0) + (route.shadow.errors ?? 0),
          noise: [...new Set([...(shadow?.noise ?? []), ...(route.shadow.noise ?? [])])],
        }
      }
      const affinity =
        route.retryAffinity === undefined
          ? seen.retryAffinity
          : {
              pinnedKeys: (seen.retryAffinity?.pinnedKeys ?? 0) + route.retryAffinity.pinnedKeys,
              repeatsFollowed:
                (seen.retryAffinity?.repeatsFollowed ?? 0) + route.retryAffinity.repeatsFollowed,
            }
      merged.set(route.name, {
        ...seen,
        overridden: seen.overridden || route.overridden,
        requestsByService: requests,
        shadow,
        retryAffinity: affinity,
      })
    }
  }
  return [...merged.values()]
}

/**
 * The route's `shadow.keepExamples` in `config` (how many mismatch examples each process keeps,
 * and so the merged list too); 50 for a route `config` does not have.
 */
export function keepExamplesOf(config: ProxyConfig): (route: string) => number {
  const keep = new Map<string, number>()
  for (const listener of config.listeners)
    for (const route of listener.routes)
      if (route.shadow !== undefined) keep.set(route.name, route.shadow.keepExamples)
  return (route) => keep.get(route) ?? 50
}
