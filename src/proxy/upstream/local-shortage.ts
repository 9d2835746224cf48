// Connects that fail for want of the proxy's own resources rather than the upstream's: the
// socket could not even be created. Under a connection flood (or a low `ulimit -n`) every
// upstream connect fails this way at once; counted as the upstream's failures they opened the
// breaker of a healthy service (503 BROKEN_CIRCUIT for its whole cooldown, after descriptors
// were free again) and ejected its endpoints, and nothing said the proxy was the one short.

import type { Clock } from '../../core/clock.js'
import type { Logger } from '../../observability/logger.js'

/** What each local shortage means, by the error's `code` (node's errno names). */
const shortages: Readonly<Record<string, string>> = {
  EMFILE: 'the proxy is out of file descriptors (EMFILE)',
  ENFILE: 'the machine is out of file descriptors (ENFILE)',
  ENOBUFS: 'the machine is out of socket buffer space (ENOBUFS)',
  ENOMEM: 'the proxy is out of kernel memory for sockets (ENOMEM)',
}

/**
 * What the proxy is short of when `error` (a connect's) is a local resource error (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM), as a phrase for a problem detail; undefined for any other error.
 */
export function localShortage(error: Error): string | undefined {
  const code = (error as { code?: unknown }).code
  return typeof code === 'string' && Object.hasOwn(shortages, code) ? shortages[code] : undefined
}

/** How often a service logs its local shortages at most, as failed accepts are. */
const logEveryMs = 10_000

/**
 * Logs a service's local shortages (`msg: "upstream connect failed: proxy out of resources"`,
 * warn) at most every 10 s, with how many were not logged since: a shortage fails every
 * connect at once, and a line for each would flood the log when it can least afford it.
 */
export class ShortageLog {
  readonly #clock: Clock
  readonly #logger: Logger
  #loggedAt = Number.NEGATIVE_INFINITY
  #suppressed = 0

  constructor(clock: Clock, logger: Logger) {
    this.#clock = clock
    this.#logger = logger
  }

  /** Notes one failed connect to `endpoint` of `service` with `error`'s code. */
  note(service: string, endpoint: string, error: Error): void {
    const now = this.#clock.now()
    if (now - this.#loggedAt < logEveryMs) {
      this.#suppressed++
      return
    }
    this.#loggedAt = now
    this.#logger.warn('upstream connect failed: proxy out of resources', {
      service,
      endpoint,
      code: (error as { code?: unknown }).code,
      error: error.message,
      ...(this.#suppressed > 0 ? { suppressed: this.#suppressed } : {}),
    })
    this.#suppressed = 0
  }
}
