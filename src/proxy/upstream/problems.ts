// The proxy's own answers for a service that could not answer: the status for each failure
// code and the problem detail naming the service. Shared by forwarded requests and tunnels.

import type { ErrorCode } from '../../core/error-codes.js'

/** The status the proxy answers with for each failure code (502 for any other). */
export const statusFor: Partial<Record<ErrorCode, number>> = {
  BROKEN_CIRCUIT: 503,
  ISOLATED_CIRCUIT: 503,
  BULKHEAD_FULL: 503,
  UPSTREAM_NO_ENDPOINTS: 503,
  UPSTREAM_POOL_REFUSED: 503,
  UPSTREAM_CONNECT_FAILED: 502,
  UPSTREAM_RESET: 502,
  UPSTREAM_RESPONSE_INVALID: 502,
  UPSTREAM_TIMEOUT: 504,
  DEADLINE_EXCEEDED: 504,
}

/**
 * The problem detail for a failure code, naming the service; `reason` adds why: for
 * `UPSTREAM_RESPONSE_INVALID`, what the parser refused (`HPE_INVALID_HEADER_TOKEN: ...`), for
 * `DEADLINE_EXCEEDED`, where the request was when the deadline passed, for
 * `UPSTREAM_POOL_REFUSED`, what the proxy is short of (`the proxy is out of file descriptors
 * (EMFILE)`).
 */
export function problemDetail(code: ErrorCode, service: string, reason?: string): string {
  switch (code) {
    case 'BROKEN_CIRCUIT':
      return `The circuit breaker of service ${service} is open.`
    case 'ISOLATED_CIRCUIT':
      return `Service ${service} is isolated by an operator.`
    case 'BULKHEAD_FULL':
      return `Service ${service} has no free slot and no free queue place.`
    case 'UPSTREAM_NO_ENDPOINTS':
      return `Service ${service} has no endpoints.`
    case 'UPSTREAM_CONNECT_FAILED':
      return `Could not connect to service ${service}.`
    case 'UPSTREAM_POOL_REFUSED':
      return `The proxy's connection pool for service ${service} refused the request before sending it${reason === undefined ? '' : `: ${reason}`}.`
    case 'UPSTREAM_TIMEOUT':
      return `Service ${service} did not answer in time.`
    case 'DEADLINE_EXCEEDED':
      return `The deadline passed before service ${service} answered${reason === undefined ? '' : ` (${reason})`}.`
    case 'UPSTREAM_RESPONSE_INVALID':
      return `Service ${service} sent a malformed response${reason === undefined ? '' : ` (${reason})`}.`
    case 'ABORTED':
      return `The caller went away before service ${service} answered.`
    default:
      return `The connection to service ${service} closed before its response was complete.`
  }
}
