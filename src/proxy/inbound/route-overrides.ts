// What a config reload does to the admin API's route switches. One rule for the runtime, which
// carries each process's switches onto the new route tables, and for the primary of the
// multi-process mode, which gives a restarted worker the switches in force: both must agree,
// or a worker restarted after a reload would route differently from its siblings.
//
// A reload is asked for by any change of the file's text, so clearing every switch on it sent
// a route an operator had moved to the new service back to legacy when someone edited another
// service's timeout, a comment or an `x-` block. A switch is kept unless the file changed what
// it overrides (the route's targets: the file was edited for that route, so the file wins) or
// it can no longer stand as sent (its route or one of its services is gone).

import type { Logger } from '../../observability/logger.js'
import type { ProxyConfig, RouteConfig, RouteOverride, RouteTargetConfig } from '../contracts.js'

/** A route switch: the route's name and the targets the admin API gave it. */
export interface NamedRouteOverride extends RouteOverride {
  readonly route: string
}

/** Why a reload dropped a route switch. */
export type OverrideDropReason = 'route removed' | 'targets changed' | 'service removed'

/** A switch a reload dropped, and why (`services`: the ones it named that are gone). */
export interface DroppedOverride {
  readonly route: string
  readonly reason: OverrideDropReason
  readonly services?: readonly string[]
}

/** What {@link overridesAfterReload} decided, each list in the order the switches were given. */
export interface OverridesAfterReload {
  readonly kept: readonly NamedRouteOverride[]
  readonly dropped: readonly DroppedOverride[]
}

/**
 * Sorts the route switches in force under `before` into those a reload to `after` keeps and
 * those it drops. A switch is kept when its route is in `after` with the same configured
 * targets as in `before` (the same services with the same weights, in any order) and every
 * service it names (at any weight) is configured in `after`. Route names are unique across
 * listeners, so a route that moved to another listener keeps its switch too.
 *
 * @example
 * ```ts
 * const { kept, dropped } = overridesAfterReload(running, next, [
 *   { route: 'orders', targets: [{ service: 'modern', weight: 1 }] },
 * ])
 * ```
 */
export function overridesAfterReload(
  before: ProxyConfig,
  after: ProxyConfig,
  overrides: Iterable<NamedRouteOverride>,
): OverridesAfterReload {
  const previous = routesByName(before)
  const next = routesByName(after)
  const kept: NamedRouteOverride[] = []
  const dropped: DroppedOverride[] = []
  for (const override of overrides) {
    const { route } = override
    const now = next.get(route)
    if (now === undefined) {
      dropped.push({ route, reason: 'route removed' })
      continue
    }
    const was = previous.get(route)
    if (was === undefined || !sameTargets(was.targets, now.targets)) {
      dropped.push({ route, reason: 'targets changed' })
      continue
    }
    const gone = override.targets.map((t) => t.service).filter((s) => !after.services.has(s))
    if (gone.length > 0) {
      dropped.push({ route, reason: 'service removed', services: gone })
      continue
    }
    kept.push(override)
  }
  return { kept, dropped }
}

/**
 * Logs what {@link overridesAfterReload} decided, one line per switch: `route override kept by
 * reload` (info: `route`, `targets`) or `route override dropped by reload` (warn: `route`,
 * `reason`, and `services` for a service removed). With `repeated`, every line is at debug: a
 * worker of the multi-process mode, whose primary logs the same decision once for all of them.
 */
export function logOverridesAfterReload(
  log: Logger,
  { kept, dropped }: OverridesAfterReload,
  repeated = false,
): void {
  for (const { route, targets } of kept)
    log[repeated ? 'debug' : 'info']('route override kept by reload', { route, targets })
  for (const { route, reason, services } of dropped)
    log[repeated ? 'debug' : 'warn']('route override dropped by reload', {
      route,
      reason,
      ...(services === undefined ? {} : { services }),
    })
}

function routesByName(config: ProxyConfig): Map<string, RouteConfig> {
  const routes = new Map<string, RouteConfig>()
  for (const listener of config.listeners)
    for (const route of listener.routes) routes.set(route.name, route)
  return routes
}

// A route's targets name each service once (the config is checked for it), so the order they
// are written in does not change where requests go, and neither does it here.
function sameTargets(a: readonly RouteTargetConfig[], b: readonly RouteTargetConfig[]): boolean {
  if (a.length !== b.length) return false
  const weights = new Map(a.map((t) => [t.service, t.weight]))
  return b.every((t) => weights.get(t.service) === t.weight)
}
