import { subscribe } from 'node:diagnostics_channel'

// A header whose value is only known when the request is written: the deadline budget, which
// must not include the time the request waited for a pooled connection or for a connect.
//
// undici 7 offers no hook between "connected" and "headers serialized" that may change the
// headers: interceptors and the handler's `dispatch` run before the request waits for a
// connection, and `onRequestStart` (called on the connection, right before the request's header
// lines are written) gets a controller, not the request. But its `Request` keeps the headers as
// a flat `[name, value, ...]` array that it serializes only after `onRequestStart` returns
// (client-h1's writeH1), and it is published on the documented `undici:request:create`
// diagnostics channel at the end of its constructor. So the exchange claims its own request
// there and, in `onRequestStart`, replaces the header's value in that array. Should a later
// undici build the header lines earlier, the value given at dispatch is sent (still a correct,
// if older, budget); the deadline tests would notice.

/** The part of undici's `Request` relied on: its headers as `[name, value, ...]`. */
export interface UndiciRequest {
  readonly headers: unknown
}

let claiming: ((request: UndiciRequest) => void) | undefined
let subscribed = false

function onRequestCreate(message: unknown): void {
  const claim = claiming
  if (claim === undefined) return
  claiming = undefined
  const request = (message as { request?: UndiciRequest } | null)?.request
  if (request !== undefined) claim(request)
}

/**
 * `headers` as undici's dispatch takes them (an iterable of pairs) that also hands the undici
 * `Request` built from them to `claim`. undici iterates the pairs inside the `Request`
 * constructor, which then publishes the request on `undici:request:create` before any other
 * request can be built, so the request published next is the one these headers went into. A
 * constructor that throws after the pairs leaves a stale claim, which the next request taken
 * by anyone consumes; `claim` must therefore ignore a request arriving after its exchange ended.
 */
export function claimingHeaders(
  headers: Readonly<Record<string, string | string[]>>,
  claim: (request: UndiciRequest) => void,
): Iterable<[string, string | string[]]> {
  if (!subscribed) {
    subscribe('undici:request:create', onRequestCreate)
    subscribed = true
  }
  return {
    *[Symbol.iterator]() {
      yield* Object.entries(headers)
      claiming = claim
    },
  }
}

/**
 * Replaces the value of header `name` (lower case, as the client sends its own headers) in a
 * request claimed by {@link claimingHeaders}. Does nothing when the request does not carry
 * the header in the expected form (an undici that stores headers differently).
 */
export function rewriteHeader(request: UndiciRequest, name: string, value: string): void {
  const headers = request.headers
  if (!Array.isArray(headers)) return
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] === name && typeof headers[i + 1] === 'string') {
      headers[i + 1] = value
      return
    }
  }
}
