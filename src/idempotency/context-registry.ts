import type { IdempotencyContext } from './types.js'

// Adapters attach the context to the framework's own request object (without module
// augmentation of framework types that may not be installed). It is kept under a private
// symbol on that object: invisible to string-keyed enumeration (Object.keys, for-in,
// JSON.stringify) and to other code. It used to live in a WeakMap keyed by the request, but a
// WeakMap entry per request measurably slowed every keyed request: V8's young-generation
// collector keeps the values of such entries alive (the context, and through it the whole
// execution) until they are promoted to the old generation, which made every scavenge copy and
// promote them. A request object that cannot take a property (frozen or sealed) still gets one
// through the WeakMap.
const contextKey = Symbol('breakwater.idempotency.context')
const fallback = new WeakMap<object, IdempotencyContext>()

type WithContext = { [contextKey]?: IdempotencyContext }

/** @internal Attaches `context` to a framework request object. */
export function attachContext(target: object, context: IdempotencyContext): void {
  if (Object.isExtensible(target)) (target as WithContext)[contextKey] = context
  else fallback.set(target, context)
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
  return Object.hasOwn(target, contextKey)
    ? (target as WithContext)[contextKey]
    : fallback.get(target)
}
