// What a config reload keeps. One rule for the runtime, which keeps a service's runtime (its
// pools, breaker state, isolation and ejections) across a reload, and for the primary of the
// multi-process mode, which must know which of its remembered isolations the reload undid.

import type { ProxyConfig } from '../contracts.js'

/**
 * True when a reload from `before` to `after` keeps service `name`'s runtime: the service is in
 * both with the same settings, and the deadline header its calls send and the Via pseudonym its answers get are the same. Otherwise
 * the service gets a new runtime (breaker closed, not isolated), or is gone.
 */
export function keepsServiceRuntime(
  before: ProxyConfig,
  after: ProxyConfig,
  name: string,
): boolean {
  const previous = before.services.get(name)
  const next = after.services.get(name)
  return (
    previous !== undefined &&
    next !== undefined &&
    before.deadlineHeader === after.deadlineHeader &&
    before.via === after.via &&
    JSON.stringify(previous) === JSON.stringify(next)
  )
}
