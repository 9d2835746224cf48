import { AsyncResource } from 'node:async_hooks'

// Created when breakwater is first loaded, at the top level of an import: its async context
// holds none of an application's (no deadline, no open transaction, no request's store).
const root = new AsyncResource('breakwater.detached')

/**
 * Runs `fn` in breakwater's own async context instead of its caller's. Long-running pieces (a
 * relay's loop, a worker's poll loop and lease timers, a subscriber's deliveries) start in it,
 * so they never inherit the context of the code that started them: a deadline set around an
 * application's startup (`withDeadline`) would otherwise bound every call they make forever
 * after, and an open transaction's context would make the stores take their statements for
 * statements of that transaction. Internal.
 *
 * @example
 * ```ts
 * this.#loop = detached(() => this.#run())
 * ```
 */
export function detached<T>(fn: () => T): T {
  return root.runInAsyncScope(fn)
}
