import type { IdempotencyContext } from './types.js'

// Adapters attach the context to the framework's own request object without adding properties
// to it (and without module augmentation of framework types that may not be installed).
const contexts = new WeakMap<object, IdempotencyContext>()

/** @internal Attaches `context` to a framework request object. */
export function attachContext(target: object, context: IdempotencyContext): void {
  contexts.set(target, context)
}

/**
 * The idempotency context of a request being handled under a key: pass the framework's request
 * object (node:http or Express `req`, Fastify `request`, Hono `c`). Undefined for requests that
 * are not guarded.
 *
 * @example
 * ```ts
 * app.post('/charges', expressIdempotency(idempotency), async (req, res) => {
 *   const ctx = idempotencyContextOf(req)!
 *   await ctx.tx.execute('INSERT INTO charges (id) VALUES ($1)', [ctx.key])
 *   res.status(201).json({ ok: true })
 * })
 * ```
 */
export function idempotencyContextOf(target: object): IdempotencyContext | undefined {
  return contexts.get(target)
}
