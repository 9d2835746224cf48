// A choreography participant continues the trace of the event it reacts to: the events a
// reaction emits carry that event's trace context (W3C traceparent), as a consumer span in
// MassTransit or NServiceBus would. The outbox injects the active OpenTelemetry context, but
// the reactor ran the reaction in whatever context the subscriber had (none), so every hop of a
// choreographed flow started a new trace. Real SQLite; a minimal context manager and W3C
// propagator stand in for an OpenTelemetry SDK.
import { AsyncLocalStorage } from 'node:async_hooks'
import {
  type Context,
  type ContextManager,
  context,
  propagation,
  ROOT_CONTEXT,
  type TextMapPropagator,
  TraceFlags,
  trace,
} from '@opentelemetry/api'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/index.js'
import { createOutbox, migrateInbox, migrateOutbox } from '../../src/outbox/index.js'
import { createReactor } from '../../src/saga/index.js'
import { sqliteDb, type TestDb } from './databases.js'

class StorageContextManager implements ContextManager {
  readonly #storage = new AsyncLocalStorage<Context>()
  active(): Context {
    return this.#storage.getStore() ?? ROOT_CONTEXT
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    ctx: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return this.#storage.run(ctx, () => fn.call(thisArg, ...args))
  }
  bind<T>(_ctx: Context, target: T): T {
    return target
  }
  enable(): this {
    return this
  }
  disable(): this {
    this.#storage.disable()
    return this
  }
}

const w3c: TextMapPropagator = {
  inject(ctx, carrier, setter) {
    const span = trace.getSpanContext(ctx)
    if (span !== undefined)
      setter.set(carrier, 'traceparent', `00-${span.traceId}-${span.spanId}-0${span.traceFlags}`)
  },
  extract(ctx, carrier, getter) {
    const value = getter.get(carrier, 'traceparent')
    const match = typeof value === 'string' ? /^00-(\w{32})-(\w{16})-0(\d)$/.exec(value) : null
    if (match === null) return ctx
    return trace.setSpanContext(ctx, {
      traceId: match[1]!,
      spanId: match[2]!,
      traceFlags: Number(match[3]) as TraceFlags,
      isRemote: true,
    })
  },
  fields: () => ['traceparent'],
}

describe('createReactor trace context', () => {
  let t: TestDb

  beforeAll(async () => {
    context.setGlobalContextManager(new StorageContextManager())
    propagation.setGlobalPropagator(w3c)
    t = await sqliteDb.open('saga_reactor_trace')
    await migrateOutbox(t.db)
    await migrateInbox(t.db)
  })
  afterAll(async () => {
    propagation.disable()
    context.disable()
    await t?.close()
  })

  const traceparent = `00-${'a1'.repeat(16)}-${'b2'.repeat(8)}-0${TraceFlags.SAMPLED}`
  const message = (id: string, headers: Record<string, string>): IncomingMessage => ({
    id,
    deliveryCount: 1,
    topic: 'orders',
    key: 'o-1',
    payload: new TextEncoder().encode('{}'),
    headers: { 'event-type': 'order-placed', 'correlation-id': 'o-1', ...headers },
  })

  const emittedHeaders = async (id: string): Promise<Record<string, string>> => {
    const rows = await t.db.query<{ headers: string }>(
      'SELECT headers FROM breakwater_outbox WHERE event_id = $1',
      [id],
    )
    expect(rows).toHaveLength(1)
    return JSON.parse(rows[0]!.headers) as Record<string, string>
  }

  const reactor = () =>
    createReactor({
      db: t.db,
      consumer: 'payments',
      outbox: createOutbox(),
      reactions: {
        'order-placed': async ({ event, emit }) => {
          await emit({
            id: `${event.id}:charged`,
            aggregateType: 'payment',
            aggregateId: event.key,
            type: 'payment-charged',
            payload: {},
          })
        },
      },
    })

  it("emits events in the trace of the event it reacts to (its traceparent's trace id)", async () => {
    await reactor()(message('m-1', { traceparent }))
    const headers = await emittedHeaders('m-1:charged')
    expect(headers.traceparent).toBe(traceparent)
    expect(headers['causation-id']).toBe('m-1')
  })

  it('emits no trace context for an event that carried none', async () => {
    await reactor()(message('m-2', {}))
    expect(await emittedHeaders('m-2:charged')).not.toHaveProperty('traceparent')
  })
})
