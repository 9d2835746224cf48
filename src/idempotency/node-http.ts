import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { CapturedRun } from './captured-run.js'
import { attachContext } from './context-registry.js'
import { computedString, type Idempotency, type IdempotencyBegin } from './core.js'
import { IdempotencyBodyTooLargeError } from './errors.js'
import {
  answerInternalError,
  answerNodeRequest,
  BodyTooLargeError,
  disconnectSignal,
  nodeRequest,
  readNodeBody,
  writeInternalError,
} from './node-response.js'
import type { IdempotencyContext } from './types.js'

/** Options of {@link idempotentHandler}. */
export interface IdempotentHandlerOptions {
  /** The protocol (from `createIdempotency`). */
  readonly idempotency: Idempotency
  /**
   * Computes the scope from the node request (e.g. an authenticated tenant), overriding the
   * core's `scope` option.
   * @default the core's `scope` option
   */
  readonly scope?: ((req: IncomingMessage) => string | Promise<string>) | undefined
  /**
   * The route used in the fingerprint. It must return a string at once: anything else (a
   * promise, undefined) fails the request (500) with `INVALID_OPTION` naming `route`.
   * @default the request target as received (`req.url`: path and query)
   */
  readonly route?: ((req: IncomingMessage) => string) | undefined
  /**
   * The largest request body read (the wrapper reads the body to fingerprint it); larger
   * bodies are answered 413. It applies to every request, guarded or not: the wrapper reads
   * each body for the handler's `body`.
   * @default 1048576 (1 MiB)
   */
  readonly maxBodyBytes?: number | undefined
  /**
   * Called with an error thrown by the handler (after a 500 was sent) or by the store.
   * @default console.error
   */
  readonly onError?: ((error: unknown) => void) | undefined
}

/** The keys IdempotentHandlerOptions takes (internal: not exported from the package root). */
export const handlerOptions = optionKeys<IdempotentHandlerOptions>({
  idempotency: true,
  scope: true,
  route: true,
  maxBodyBytes: true,
  onError: true,
})

/** What {@link idempotentHandler} passes to the handler besides `req` and `res`. */
export interface IdempotentHandlerExtras {
  /** The request body, already read (the request stream is consumed). */
  readonly body: Buffer
  /** The idempotency context, or undefined when the request is not guarded (e.g. a GET). */
  readonly idempotency: IdempotencyContext | undefined
}

/** A node:http handler that runs under the idempotency protocol. */
export type IdempotentRequestHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  extras: IdempotentHandlerExtras,
) => void | Promise<void>

/**
 * The `route` option, refusing what it returns unless it is a string: a missing `return` or an
 * async function was hashed as "undefined" or "[object Promise]", the same for every request,
 * so a key reused on another route was replayed instead of answered 422. Thrown before the
 * claim, it fails the request as a bad scope does (500, `onError`).
 */
function stringRoute(route: (req: IncomingMessage) => string): (req: IncomingMessage) => string {
  return (req) => {
    const target: unknown = route(req)
    if (typeof target === 'string') return target
    throw new InvalidOptionError(
      'route',
      'a function returning the request target as a string (not a promise)',
      target,
    )
  }
}

/**
 * Wraps a node:http handler for `http.createServer`: reads the body, validates the key, replays
 * recorded responses (with `Idempotent-Replayed: true`) or answers problems (400, 409, 422)
 * without calling the handler, and otherwise runs the handler with the idempotency context.
 * The handler writes its response to `res` as usual; it is held back until it has been
 * recorded in `ctx.tx` and committed, then sent. A handler that throws before ending the
 * response gets its transaction rolled back, the key released, and a 500 problem sent.
 *
 * A handler must end its response within the lease (`leaseMs`). If the lease runs out first,
 * `ctx.tx` is rolled back and the client is answered at once with the 409 problem
 * (`IDEMPOTENCY_IN_PROGRESS`, `reason: 'lease-lost'`, with `Retry-After`), or, if the handler
 * had already sent its headers past the wrapper, its connection is destroyed; the key stays in
 * progress, expired, so the client's retry takes it over and runs again. Whatever the handler
 * writes to `res` afterwards is dropped, and its statements on `ctx.tx` fail with that 409's
 * error (not passed to `onError`; the `lease-lost` diagnostics event reports the overrun).
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const server = http.createServer(
 *   idempotentHandler({ idempotency }, async (req, res, { body, idempotency: ctx }) => {
 *     await ctx?.tx.execute('INSERT INTO orders (id, body) VALUES ($1, $2)', [ctx.key, body])
 *     res.writeHead(201, { 'content-type': 'application/json' })
 *     res.end(JSON.stringify({ id: ctx?.key }))
 *   }),
 * )
 * ```
 */
export function idempotentHandler(
  options: IdempotentHandlerOptions,
  handler: IdempotentRequestHandler,
): (req: IncomingMessage, res: ServerResponse) => void {
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, handlerOptions, { bareNames: true })
  const idempotency = options.idempotency
  if (typeof idempotency?.begin !== 'function') {
    throw new InvalidOptionError('idempotency', 'an Idempotency (createIdempotency)', idempotency)
  }
  checkFunction('handler', handler)
  const scope =
    options.scope === undefined
      ? undefined
      : checkFunction<(req: IncomingMessage) => string | Promise<string>>('scope', options.scope)
  const route =
    options.route === undefined
      ? (req: IncomingMessage) => req.url ?? '/'
      : stringRoute(checkFunction<(req: IncomingMessage) => string>('route', options.route))
  const maxBodyBytes = checkInteger('maxBodyBytes', options.maxBodyBytes ?? 1_048_576, 0)
  const onError =
    options.onError === undefined
      ? (error: unknown) => console.error(error)
      : checkFunction<(error: unknown) => void>('onError', options.onError)

  // A failure before the handler ran (the body unreadable, the scope or the store failing):
  // answered without running the handler, so over the earlier layers' headers, as a replay or a
  // problem is. Once a handler ran, its headers describe a response that was not sent (below).
  const failedBeforeHandler = (res: ServerResponse, error: unknown): void => {
    answerInternalError(res)
    onError(error)
  }

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const signal = disconnectSignal(res)
    let body: Buffer
    try {
      body = await readNodeBody(req, maxBodyBytes)
    } catch (error) {
      if (!(error instanceof BodyTooLargeError)) {
        failedBeforeHandler(res, error)
        return
      }
      res.setHeader('connection', 'close')
      answerNodeRequest(res, idempotency.problem(new IdempotencyBodyTooLargeError(maxBodyBytes)))
      return
    }
    if (!idempotency.appliesTo(req.method ?? 'GET')) {
      await handler(req, res, { body, idempotency: undefined })
      return
    }
    let begun: IdempotencyBegin
    try {
      begun = await idempotency.begin(
        nodeRequest(
          req,
          route(req),
          body,
          scope === undefined ? undefined : computedString('scope', await scope(req)),
          signal,
        ),
      )
    } catch (error) {
      failedBeforeHandler(res, error)
      return
    }
    if (begun.kind === 'respond') {
      answerNodeRequest(res, begun.response)
      return
    }
    if (begun.kind === 'bypass') {
      await handler(req, res, { body, idempotency: undefined })
      return
    }
    const { execution } = begun
    attachContext(req, execution.context)
    new CapturedRun(idempotency, execution, res, { onError, closeOnLeaseLost: false }).start(() =>
      handler(req, res, { body, idempotency: execution.context }),
    )
  }

  return (req, res) => {
    // Left: a handler the wrapper passed a request to (not guarded, or bypassed) failing.
    serve(req, res).catch((error: unknown) => {
      writeInternalError(res)
      onError(error)
    })
  }
}
