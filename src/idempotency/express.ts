import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { CapturedRun, type CapturedRunOptions } from './captured-run.js'
import { attachContext } from './context-registry.js'
import { computedString, type Idempotency } from './core.js'
import { IdempotencyBodyTooLargeError } from './errors.js'
import { parsedBodyBytes } from './fingerprint.js'
import {
  answerNodeRequest,
  BodyTooLargeError,
  disconnectSignal,
  nodeHeader,
  nodeRequest,
  readNodeBody,
} from './node-response.js'

/** The parts of an Express request the middleware reads (any Express 5 `Request`). */
export interface ExpressLikeRequest extends IncomingMessage {
  /**
   * The parsed body (or the raw body the middleware read). `any`, as in Express's own
   * `Request`: Express infers a route's request body type from all its handlers, so `unknown`
   * here made `req.body` unknown in every handler after the middleware (TS18046 on
   * `req.body.amount`), where without the middleware it is `any`.
   */
  // biome-ignore lint/suspicious/noExplicitAny: matches Express's Request, see above
  body?: any
  readonly originalUrl?: string
}

/** The parts of an Express response the middleware uses (any Express 5 `Response`). */
export interface ExpressLikeResponse extends ServerResponse {
  readonly locals?: Record<string, unknown>
}

/** An Express middleware (structurally typed, so breakwater does not depend on Express). */
export type ExpressIdempotencyMiddleware = (
  req: ExpressLikeRequest,
  res: ExpressLikeResponse,
  next: (error?: unknown) => void,
) => Promise<void>

/** Options of {@link expressIdempotency}. */
export interface ExpressIdempotencyOptions {
  /**
   * Computes the scope from the Express request (e.g. `req.user.tenantId` set by your auth
   * middleware), overriding the core's `scope` option.
   * @default the core's `scope` option
   */
  readonly scope?: ((req: ExpressLikeRequest) => string | Promise<string>) | undefined
  /**
   * The largest raw body read when no body parser ran before the middleware.
   * @default 1048576 (1 MiB)
   */
  readonly maxBodyBytes?: number | undefined
  /**
   * Called with an error of the store that kept the handler's response from being recorded
   * (the client got a 500, the key was released). Express cannot render it: the handler's
   * response already went through `res.end`. Other errors go to Express's error handling.
   * @default console.error
   */
  readonly onError?: ((error: unknown) => void) | undefined
}

/** The keys ExpressIdempotencyOptions takes (internal: not exported from the package root). */
export const expressOptions = optionKeys<ExpressIdempotencyOptions>({
  scope: true,
  maxBodyBytes: true,
  onError: true,
})

/**
 * Express 5 middleware for the Idempotency-Key protocol. Mount it after your body parser and
 * before the handlers it guards (`app.post('/charges', express.json(), expressIdempotency(i),
 * handler)`). The fingerprint hashes the canonical JSON of `req.body` (or its bytes for a
 * Buffer, or a string from a text parser; see `parsedBodyBytes`); when no parser ran, the middleware reads the raw body into `req.body` as a
 * Buffer. A body an earlier layer drained without setting `req.body` cannot be fingerprinted:
 * such a request goes to `next()` with `IdempotencyBodyUnavailableError` and nothing runs.
 * Handlers find the context with `idempotencyContextOf(req)` or in
 * `res.locals.idempotency`; their response (`res.json`, `res.send`, errors rendered by Express)
 * is held back until it is recorded, then sent. Status and headers are fixed at the handler's
 * first `res.write`, as node fixes them by sending them: a response whose status or headers
 * changed after it (an error handler rendering a handler's error after a partial body) fails as
 * a throw after a partial write does on node:http (500 problem, `ctx.tx` rolled back, key
 * released, an `ERR_HTTP_HEADERS_SENT` error to `onError`).
 *
 * A handler must end its response within the lease (`leaseMs`). If the lease runs out first,
 * `ctx.tx` is rolled back and the client is answered at once with the 409 problem
 * (`reason: 'lease-lost'`, `Retry-After`, `Connection: close`), or its connection is destroyed
 * if headers already went out past the middleware; the key stays in progress, expired, for the
 * client's retry to take over. What the stale handler writes afterwards is dropped; its errors
 * reach Express's error handling as any error after a response was sent.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * app.post('/charges', express.json(), expressIdempotency(idempotency), async (req, res) => {
 *   const ctx = idempotencyContextOf(req)!
 *   await ctx.tx.execute('INSERT INTO charges (id, amount) VALUES ($1, $2)', [ctx.key, req.body.amount])
 *   res.status(201).json({ charged: req.body.amount })
 * })
 * ```
 */
export function expressIdempotency(
  idempotency: Idempotency,
  options: ExpressIdempotencyOptions = {},
): ExpressIdempotencyMiddleware {
  if (typeof idempotency?.begin !== 'function') {
    throw new InvalidOptionError('idempotency', 'an Idempotency (createIdempotency)', idempotency)
  }
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, expressOptions, { bareNames: true })
  const scope =
    options.scope === undefined
      ? undefined
      : checkFunction<(req: ExpressLikeRequest) => string | Promise<string>>('scope', options.scope)
  const maxBodyBytes = checkInteger('maxBodyBytes', options.maxBodyBytes ?? 1_048_576, 0)
  const onError =
    options.onError === undefined
      ? (error: unknown) => console.error(error)
      : checkFunction<(error: unknown) => void>('onError', options.onError)
  const runOptions: CapturedRunOptions = {
    onError,
    closeOnLeaseLost: true,
    fixedAtFirstWrite: true,
  }

  return async (req, res, next) => {
    if (!idempotency.appliesTo(req.method ?? 'GET')) {
      next()
      return
    }
    const signal = disconnectSignal(res)
    // No parser ran: read the raw body. If an earlier layer drained it without setting
    // req.body, readNodeBody refuses (IDEMPOTENCY_BODY_UNAVAILABLE, to next()) rather than
    // fingerprint what is left as the body.
    if (req.body === undefined) {
      try {
        req.body = await readNodeBody(req, maxBodyBytes)
      } catch (error) {
        if (!(error instanceof BodyTooLargeError)) throw error
        res.setHeader('connection', 'close')
        answerNodeRequest(res, idempotency.problem(new IdempotencyBodyTooLargeError(maxBodyBytes)))
        return
      }
    }
    const begun = await idempotency.begin(
      nodeRequest(
        req,
        req.originalUrl ?? req.url ?? '/',
        parsedBodyBytes(req.body, nodeHeader(req, 'content-type')),
        scope === undefined ? undefined : computedString('scope', await scope(req)),
        signal,
      ),
    )
    if (begun.kind === 'respond') {
      answerNodeRequest(res, begun.response)
      return
    }
    if (begun.kind === 'bypass') {
      next()
      return
    }
    const { execution } = begun
    attachContext(req, execution.context)
    if (res.locals !== undefined) res.locals.idempotency = execution.context
    // Express renders a handler's error through res.end too (status 500 by default), so the
    // captured response covers failures: a 5xx releases the key. The run sends what was
    // recorded, or a 500 (and onError) when the store fails: Express cannot render that error
    // any more, the handler's response already went through res.end. A handler that throws
    // after res.write is not seen here either: its error handler's response lands on the one
    // the handler started, so status or headers changing after the first write fail the
    // execution (fixedAtFirstWrite), as node:http's handler that throws after a partial write.
    new CapturedRun(idempotency, execution, res, runOptions).start(next)
  }
}
