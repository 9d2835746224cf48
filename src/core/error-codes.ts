/**
 * Every stable error code breakwater throws, with a one-line meaning.
 *
 * This object is the single source of truth: `docs/errors.md` documents each code and a test
 * fails when the two disagree. Add a code here first, then document it.
 */
export const errorCodes = {
  INVALID_OPTION: 'An option passed to a factory or function has a wrong type or value.',
  CONFIG_INVALID: 'A configuration file failed validation; the message names each bad path.',
  ABORTED: 'The caller aborted the operation through its AbortSignal.',
  TIMEOUT: 'An attempt or operation ran past its timeout.',
  DEADLINE_EXCEEDED: 'The end-to-end deadline passed, or too little of it is left to start.',
  BROKEN_CIRCUIT: 'The circuit breaker is open (or half-open and busy) and failed the call fast.',
  ISOLATED_CIRCUIT: 'The circuit breaker was isolated by hand and fails every call.',
  BULKHEAD_FULL:
    'The bulkhead has no free slot and no free queue place (or the queue wait ran out).',
  RETRY_BUDGET_EXHAUSTED: "A retry was refused because the downstream's retry budget is spent.",
  HTTP_STATUS: 'A downstream answered with an HTTP status the caller treats as a failure.',
} as const

/** A stable, documented error code. */
export type ErrorCode = keyof typeof errorCodes
