import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { attachContext } from './context-registry.js'
import { computedString, type Idempotency } from './core.js'
import { IdempotencyBodyTooLargeError, type IdempotencyInProgressError } from './errors.js'
import { leaseLostAnswer, readBodyWithinLease } from './lease-lost.js'
import type { IdempotencyResponse } from './types.js'

/** The parts of a Hono context the middleware uses (any Hono 4 `Context`). */
export interface HonoLikeContext {
  readonly req: {
    readonly method: string
    readonly url: string
    readonly raw: Request
    header(name: string): string | undefined
    arrayBuffer(): Promise<ArrayBuffer>
  }
  get res(): Response
  set res(response: Response | undefined)
  set(key: 'idempotency', value: unknown): void
  /** A response with the headers set so far (`c.header()`), without setting `c.res`. */
  body(data: null, status: 200): Response
}

/** A Hono middleware (structurally typed, so breakwater does not depend on Hono). */
export type HonoIdempotencyMiddleware = (
  c: HonoLikeContext,
  next: () => Promise<void>,
) => Promise<Response | undefined>

/** Options of {@link honoIdempotency}. */
export interface HonoIdempotencyOptions {
  /**
   * Computes the scope from the Hono context (e.g. `c.get('tenantId')`), overriding the core's
   * `scope` option.
   * @default the core's `scope` option
   */
  readonly scope?: ((c: HonoLikeContext) => string | Promise<string>) | undefined
  /**
   * The largest request body read (the middleware reads the body to fingerprint it); larger
   * bodies are answered 413 before anything is stored or the handler runs, whether they declare
   * a `Content-Length` or arrive chunked.
   * @default 1048576 (1 MiB)
   */
  readonly maxBodyBytes?: number | undefined
}

/** The keys HonoIdempotencyOptions takes (internal: not exported from the package root). */
export const honoOptions = optionKeys<HonoIdempotencyOptions>({ scope: true, maxBodyBytes: true })

// Statuses whose responses must not have a body in the Fetch API.
const nullBodyStatuses = new Set([101, 103, 204, 205, 304])

function toFetchResponse(response: IdempotencyResponse): Response {
  const headers = new Headers()
  for (const [name, value] of Object.entries(response.headers)) {
    // The body is whole: its server sets its framing. A handler's Transfer-Encoding (Hono's
    // streamText and streamSSE set `chunked`) would go out beside that Content-Length.
    if (name === 'content-length' || name === 'transfer-encoding') continue
    if (typeof value === 'string') headers.set(name, value)
    else for (const item of value) headers.append(name, item)
  }
  const body = nullBodyStatuses.has(response.status) ? null : response.body
  return new Response(body as ConstructorParameters<typeof Response>[0], {
    status: response.status,
    headers,
  })
}

// Makes `response` the whole answer, over the headers earlier middleware set (`c.header()`
// before `next()`, or on `c.res`): Hono adds them to what `c.json()` builds, but not to a
// Response a middleware returns. The response's own headers win, as a handler's do.
function answerWith(
  c: HonoLikeContext,
  response: IdempotencyResponse,
  earlier: Headers | undefined,
): undefined {
  const answered = toFetchResponse(response)
  if (earlier !== undefined) {
    earlier.forEach((value, name) => {
      if (name === 'set-cookie' || name === 'content-length' || answered.headers.has(name)) return
      answered.headers.set(name, value)
    })
    if (!answered.headers.has('set-cookie')) {
      for (const cookie of earlier.getSetCookie()) answered.headers.append('set-cookie', cookie)
    }
  }
  // Cleared first: assigning c.res over another merges that one's headers over these.
  c.res = undefined
  c.res = answered
  return undefined
}

// A response given instead of running the handler (a replay, a problem, a 413).
function answer(c: HonoLikeContext, response: IdempotencyResponse): undefined {
  return answerWith(c, response, c.res.headers)
}

// The headers earlier middleware had set when the handler is about to run, or undefined when
// there are none. Through c.body(null), not c.res: reading c.res would make Hono create it, and
// then merge its headers over any Response the handler returns. Copied: @hono/node-server's
// Response keeps the Headers it is given, which the handler's c.header() still writes to.
function earlierHeaders(c: HonoLikeContext): Headers | undefined {
  // Status 200: one an earlier layer set with c.status() might not make a Response (a 1xx).
  const { headers } = c.body(null, 200)
  return headers.keys().next().done === true ? undefined : new Headers(headers)
}

// The body through Hono (which caches it, so the handler can read it again), or undefined when
// it is larger than `maxBytes`. A declared length is trusted (the server enforces it); a chunked
// body is first counted on a copy, read no further than the limit, so a client cannot make the
// middleware buffer an unbounded body. A body an earlier middleware already read (Hono cached
// it; the raw stream can no longer be copied) is in memory already: only its size is checked.
async function readBody(c: HonoLikeContext, maxBytes: number): Promise<Uint8Array | undefined> {
  const declared = c.req.header('content-length')
  if (declared !== undefined) {
    if (Number(declared) > maxBytes) return undefined
  } else if (c.req.raw.bodyUsed) {
    const body = new Uint8Array(await c.req.arrayBuffer())
    return body.byteLength > maxBytes ? undefined : body
  } else if (c.req.raw.body !== null) {
    const reader = c.req.raw.clone().body!.getReader()
    let total = 0
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      total += value.byteLength
      if (total > maxBytes) {
        // Not awaited: cancelling one branch of a tee'd stream settles only once the other (the
        // request's own body, never read now) is cancelled too, so awaiting it left the request
        // without an answer while the client was still sending. Cancelling the request's body
        // as well would destroy its socket before the 413 goes out.
        reader.cancel().catch(() => {})
        return undefined
      }
    }
  }
  return new Uint8Array(await c.req.arrayBuffer())
}

function fetchHeaders(response: Response): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {}
  response.headers.forEach((value, name) => {
    if (name !== 'set-cookie') headers[name] = value
  })
  const cookies = response.headers.getSetCookie()
  if (cookies.length > 0) headers['set-cookie'] = cookies
  return headers
}

/**
 * Hono middleware for the Idempotency-Key protocol (`app.use('/charges/*',
 * honoIdempotency(idempotency))`). The fingerprint hashes the raw body (Hono caches it, so
 * handlers can still call `c.req.json()`). Handlers find the context with
 * `idempotencyContextOf(c)` or `c.get('idempotency')`. The handler's response (errors rendered
 * by `app.onError` included, so a 5xx releases the key) is recorded before it is returned.
 *
 * A handler must return its response, and its body end, within the lease (`leaseMs`). If the
 * lease runs out first, `ctx.tx` is rolled back, the body (if any) is cancelled, and the
 * middleware returns the 409 problem (`reason: 'lease-lost'`, with `Retry-After`) at once; the
 * key stays in progress, expired, for the client's retry to take over. What the stale handler
 * returns later is dropped.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * app.post('/charges', honoIdempotency(idempotency), async (c) => {
 *   const ctx = idempotencyContextOf(c)!
 *   await ctx.tx.execute('INSERT INTO charges (id) VALUES ($1)', [ctx.key])
 *   return c.json({ ok: true }, 201)
 * })
 * ```
 */
export function honoIdempotency(
  idempotency: Idempotency,
  options: HonoIdempotencyOptions = {},
): HonoIdempotencyMiddleware {
  if (typeof idempotency?.begin !== 'function') {
    throw new InvalidOptionError('idempotency', 'an Idempotency (createIdempotency)', idempotency)
  }
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, honoOptions, { bareNames: true })
  const scope =
    options.scope === undefined
      ? undefined
      : checkFunction<(c: HonoLikeContext) => string | Promise<string>>('scope', options.scope)
  const maxBodyBytes = checkInteger('maxBodyBytes', options.maxBodyBytes ?? 1_048_576, 0)

  return async (c, next) => {
    if (!idempotency.appliesTo(c.req.method)) {
      await next()
      return undefined
    }
    const body = await readBody(c, maxBodyBytes)
    if (body === undefined) {
      const tooLarge = idempotency.problem(new IdempotencyBodyTooLargeError(maxBodyBytes))
      // The rest of the body is never read: the connection cannot carry another request.
      return answer(c, { ...tooLarge, headers: { ...tooLarge.headers, connection: 'close' } })
    }
    const url = new URL(c.req.url)
    const scopeValue = scope === undefined ? undefined : computedString('scope', await scope(c))
    const begun = await idempotency.begin({
      method: c.req.method,
      route: `${url.pathname}${url.search}`,
      header: (name) => c.req.header(name),
      body,
      signal: c.req.raw.signal,
      native: c,
      ...(scopeValue === undefined ? {} : { scope: scopeValue }),
    })
    if (begun.kind === 'respond') return answer(c, begun.response)
    if (begun.kind === 'bypass') {
      await next()
      return undefined
    }
    const { execution } = begun
    attachContext(c, execution.context)
    c.set('idempotency', execution.context)
    // Sent again with an answer that replaces the handler's response (its headers dropped).
    const earlier = earlierHeaders(c)
    const handled = next()
    let lost: IdempotencyInProgressError | undefined
    try {
      // The handler is raced against its lease: past it, ctx.tx was rolled back and the
      // response can no longer be recorded, so the client is answered now rather than left
      // waiting for a handler that may never finish (Hono drops what it returns later).
      lost = await new Promise<IdempotencyInProgressError | undefined>((resolve, reject) => {
        execution.onLeaseLost(resolve)
        handled.then(() => resolve(undefined), reject)
      })
    } catch (error) {
      // Only without an onError handler does Hono let a handler's error through.
      await execution.abort()
      throw error
    }
    const produced = c.res
    let producedBody: Uint8Array | IdempotencyInProgressError
    try {
      // A body that has not ended when the lease runs out is cancelled (lease lost, below).
      producedBody = lost ?? (await readBodyWithinLease(execution, produced.body))
    } catch (error) {
      // The handler's body failed (a stream that errored): there is nothing to record, and the
      // key and ctx.tx (on SQLite, the process's only writer) must not wait for the lease.
      await execution.abort()
      throw error
    }
    if (!(producedBody instanceof Uint8Array)) {
      return answerWith(c, await leaseLostAnswer(idempotency, execution, producedBody), earlier)
    }
    const response: IdempotencyResponse = {
      status: produced.status,
      headers: fetchHeaders(produced),
      body: producedBody,
    }
    let final: IdempotencyResponse
    try {
      final = await execution.complete(response)
    } catch (error) {
      // Not recorded (the key was released): Hono's onError answers, and merges c.res's headers
      // into its answer. They must not be the handler's (they describe a response that was not
      // sent), but must be the earlier middleware's (CORS).
      c.res = undefined
      if (earlier !== undefined) c.res = new Response(null, { headers: earlier })
      throw error
    }
    // The recorded response holds the earlier middleware's headers; a 409 in its place gets
    // them back. Assigning c.res merges the old response's headers into the new one: clearing
    // it first (answerWith) makes this the whole answer.
    return answerWith(c, final, final === response ? undefined : earlier)
  }
}
