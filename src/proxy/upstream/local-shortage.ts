// Connects that fail for want of the proxy's own resources rather than the upstream's: the
// socket could not even be created. Under a connection flood (or a low `ulimit -n`) every
// upstream connect fails this way at once; counted as the upstream's failures they opened the
// breaker of a healthy service (503 BROKEN_CIRCUIT for its whole cooldown, after descriptors
// were free again) and ejected its endpoints, and nothing said the proxy was the one short.

import type { Clock } from '../../core/clock.js'
import type { Logger } from '../../observability/logger.js'
import { RateLimitedLog } from '../rate-limited-log.js'

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

/**
 * Logs a service's local shortages (`msg: "upstream connect failed: proxy out of resources"`,
 * warn) at most every 10 s, with how many were not logged since (a {@link RateLimitedLog}), as
 * failed accepts are: a shortage fails every connect at once.
 */
export class ShortageLog {
  readonly #log: RateLimitedLog

  constructor(clock: Clock, logger: Logger) {
    this.#log = new RateLimitedLog(clock, (fields) =>
      logger.warn('upstream connect failed: proxy out of resources', fields),
    )
  }

  /** Notes one failed connect to `endpoint` of `service` with `error`'s code. */
  note(service: string, endpoint: string, error: Error): void {
    this.#log.log({
      service,
      endpoint,
      code: (error as { code?: unknown }).code,
      error: error.message,
    })
  }
}
