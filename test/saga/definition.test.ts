// defineSaga: bad declarations fail at declaration with InvalidOptionError naming the problem;
// the context is typed step by step; the crash-point parser.
import { describe, expect, expectTypeOf, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox } from '../../src/outbox/index.js'
import {
  type CompensationContext,
  commandStep,
  createSagaWorker,
  defineSaga,
  type SagaDefinition,
  type StepContext,
  sagaCrashAtFromEnv,
} from '../../src/saga/index.js'

const noop = async () => undefined

function rejection(fn: () => unknown): InvalidOptionError {
  try {
    fn()
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  throw new Error('expected the declaration to throw')
}

// What `[a, , b]` makes (a hole at `index`), which biome refuses to have written literally.
function holeAt(index: number, entries: readonly unknown[]): unknown[] {
  const list = [...entries]
  list.splice(index, 0, undefined)
  delete list[index]
  return list
}

describe('defineSaga declarations', () => {
  // A name must start with a letter or a digit, but the message listed only the characters, so
  // `_a` or `__proto__` (each character allowed) was refused without saying what was wrong.
  it.each(['_a', '.a', '-a', '__proto__'])('refuses a name starting with %j, saying why', (bad) => {
    const step = rejection(() =>
      defineSaga({ name: 'o', version: 1, steps: [{ name: bad, action: noop }] }),
    )
    expect(step.option).toBe('saga "o".steps[0].name')
    expect(step.message).toContain('starting with a letter or a digit')
    const saga = rejection(() =>
      defineSaga({ name: bad, version: 1, steps: [{ name: 'a', action: noop }] }),
    )
    expect(saga.option).toBe('saga.name')
    expect(saga.message).toContain('starting with a letter or a digit')
  })

  it('refuses duplicate step names, naming the step', () => {
    const error = rejection(() =>
      defineSaga({
        name: 'order',
        version: 1,
        steps: [
          { name: 'charge', action: noop },
          { name: 'charge', action: noop },
        ],
      }),
    )
    expect(error.option).toBe('saga "order".steps[1].name')
    expect(error.message).toContain('duplicate step name')
    expect(error.value).toBe('charge')
  })

  // Array.map skips a hole (`[a, , b]`, a doubled comma): the declaration was accepted with
  // an empty step, and every instance started was stored with a null step that no worker or
  // `saga show` could read ("changed outside breakwater").
  it.each([
    ['a hole before the steps', holeAt(0, [{ name: 'a', action: noop }]), 'saga "h".steps[0]'],
    [
      'a hole between steps',
      holeAt(1, [
        { name: 'a', action: noop },
        { name: 'b', action: noop },
      ]),
      'saga "h".steps[1]',
    ],
  ])('refuses %s, naming its index', (_label, steps, option) => {
    const error = rejection(() => defineSaga({ name: 'h', version: 1, steps: steps as never }))
    expect(error.option).toBe(option)
    expect(error.message).toContain('hole')
  })

  it('refuses a step that requires a compensation but has none', () => {
    const error = rejection(() =>
      defineSaga({
        name: 'order',
        version: 1,
        steps: [
          { name: 'charge', action: noop, compensationRequired: true },
          { name: 'ship', action: noop },
        ],
      }),
    )
    expect(error.option).toBe('saga "order".steps["charge"].compensation')
    expect(error.message).toContain('compensationRequired')
  })

  it.each([
    ['no steps', { name: 'x', version: 1, steps: [] }, 'saga "x".steps'],
    ['steps not an array', { name: 'x', version: 1, steps: 'a,b' }, 'saga "x".steps'],
    [
      'a name with spaces',
      { name: 'my saga', version: 1, steps: [{ name: 'a', action: noop }] },
      'saga.name',
    ],
    [
      'a name with @',
      { name: 'a@b', version: 1, steps: [{ name: 'a', action: noop }] },
      'saga.name',
    ],
    [
      'version 0',
      { name: 'x', version: 0, steps: [{ name: 'a', action: noop }] },
      'saga "x".version',
    ],
    [
      'version 1.5',
      { name: 'x', version: 1.5, steps: [{ name: 'a', action: noop }] },
      'saga "x".version',
    ],
    ['a missing version', { name: 'x', steps: [{ name: 'a', action: noop }] }, 'saga "x".version'],
    [
      'a step without a name',
      { name: 'x', version: 1, steps: [{ action: noop }] },
      'saga "x".steps[0].name',
    ],
    [
      'a step name too long for idempotency keys',
      { name: 'x', version: 1, steps: [{ name: 'a'.repeat(41), action: noop }] },
      'saga "x".steps[0].name',
    ],
    [
      'a step with nothing to do',
      { name: 'x', version: 1, steps: [{ name: 'a' }] },
      'saga "x".steps["a"]',
    ],
    [
      'a step that is both an action and a wait',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, sleepMs: 5 }] },
      'saga "x".steps["a"]',
    ],
    [
      'a compensation that is not a function',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, compensation: 'undo' }] },
      'saga "x".steps["a"].compensation',
    ],
    [
      'a wait step with a compensation',
      { name: 'x', version: 1, steps: [{ name: 'a', sleepMs: 5, compensation: noop }] },
      'saga "x".steps["a"].compensation',
    ],
    [
      // It would end past the latest Date whenever it started.
      'a sleep longer than Date’s range',
      { name: 'x', version: 1, steps: [{ name: 'a', sleepMs: Number.MAX_SAFE_INTEGER }] },
      'saga "x".steps["a"].sleepMs',
    ],
    [
      'a zero timeout',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, timeoutMs: 0 }] },
      'saga "x".steps["a"].timeoutMs',
    ],
    [
      'zero retry attempts',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, retry: { maxAttempts: 0 } }] },
      'saga "x".steps["a"].retry.maxAttempts',
    ],
    [
      'an unknown retry option',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, retry: { attempts: 3 } }] },
      'saga "x".steps["a"].retry.attempts',
    ],
    [
      'a bad jitter',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, retry: { jitter: 'lots' } }] },
      'saga "x".steps["a"].retry.jitter',
    ],
    [
      'a reply step without send',
      { name: 'x', version: 1, steps: [{ name: 'a', awaitReply: { timeoutMs: 10 } }] },
      'saga "x".steps["a"].send',
    ],
    [
      // A misspelt field was dropped: this step would never have been compensated.
      'an unknown step field (a misspelt compensation)',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, compensaton: noop }] },
      'saga "x".steps["a"].compensaton',
    ],
    [
      'an unknown step field (retries for retry)',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, retries: { maxAttempts: 9 } }] },
      'saga "x".steps["a"].retries',
    ],
    [
      // Its time limit is awaitReply.timeoutMs; the step's timeoutMs was ignored.
      'a reply step with timeoutMs',
      {
        name: 'x',
        version: 1,
        steps: [{ name: 'a', send: noop, awaitReply: { timeoutMs: 10 }, timeoutMs: 5 }],
      },
      'saga "x".steps["a"].timeoutMs',
    ],
    [
      'an unknown awaitReply option (a misspelt onReply)',
      {
        name: 'x',
        version: 1,
        steps: [{ name: 'a', send: noop, awaitReply: { timeoutMs: 10, onreply: noop } }],
      },
      'saga "x".steps["a"].awaitReply.onreply',
    ],
    [
      'a wait step with a compensation timeout',
      { name: 'x', version: 1, steps: [{ name: 'a', sleepMs: 5, compensationTimeoutMs: 10 }] },
      'saga "x".steps["a"].compensationTimeoutMs',
    ],
    [
      // Dead settings: most likely the compensation itself was forgotten.
      'compensationRetry on an action step without compensation',
      {
        name: 'x',
        version: 1,
        steps: [{ name: 'a', action: noop, compensationRetry: { maxAttempts: 2 } }],
      },
      'saga "x".steps["a"].compensationRetry',
    ],
    [
      'compensationTimeoutMs on an action step without compensation',
      { name: 'x', version: 1, steps: [{ name: 'a', action: noop, compensationTimeoutMs: 10 }] },
      'saga "x".steps["a"].compensationTimeoutMs',
    ],
    [
      'compensationRetry on a reply step without compensation',
      {
        name: 'x',
        version: 1,
        steps: [{ name: 'a', send: noop, awaitReply: { timeoutMs: 10 }, compensationRetry: {} }],
      },
      'saga "x".steps["a"].compensationRetry',
    ],
    [
      'compensationTimeoutMs on a reply step without compensation',
      {
        name: 'x',
        version: 1,
        steps: [{ name: 'a', send: noop, awaitReply: { timeoutMs: 10 }, compensationTimeoutMs: 5 }],
      },
      'saga "x".steps["a"].compensationTimeoutMs',
    ],
    [
      'an input parser that is not a function',
      { name: 'x', version: 1, input: {}, steps: [{ name: 'a', action: noop }] },
      'saga "x".input',
    ],
  ])('refuses %s', (_label, declaration, option) => {
    const error = rejection(() => defineSaga(declaration as never))
    expect(error.option).toBe(option)
  })

  it('names the missing compensation when compensationRetry or compensationTimeoutMs is set without one', () => {
    const error = rejection(() =>
      defineSaga({
        name: 'x',
        version: 1,
        steps: [{ name: 'a', action: noop, compensationTimeoutMs: 10 }],
      }),
    )
    expect(error.message).toContain('without a compensation')
    // With the compensation both are accepted, as before.
    defineSaga({
      name: 'x',
      version: 1,
      steps: [
        {
          name: 'a',
          action: noop,
          compensation: noop,
          compensationRetry: { maxAttempts: 2 },
          compensationTimeoutMs: 10,
        },
      ],
    })
  })

  it('refuses a commandStep option it does not know, naming it (it was dropped)', () => {
    const error = rejection(() =>
      commandStep({
        name: 'charge',
        outbox: createOutbox(),
        timeoutMs: 1_000,
        command: () => ({
          aggregateType: 'payment',
          aggregateId: 'p',
          type: 'charge',
          payload: {},
        }),
        compensaton: noop,
      } as never),
    )
    expect(error.option).toBe('commandStep.compensaton')
  })

  it('says so when a definition comes from another copy of breakwater (the worker CLI loading an app’s own)', () => {
    // What a second copy's defineSaga returns: a frozen object with the same fields.
    const foreign = Object.freeze({ name: 'order', version: 1, key: 'order@1', stepNames: ['a'] })
    const db = { dialect: 'sqlite', transaction: async () => undefined }
    const error = rejection(() => createSagaWorker({ db: db as never, sagas: [foreign as never] }))
    expect(error.option).toBe('sagas[0]')
    expect(error.message).toContain('another copy of breakwater')
  })

  it('accepts a valid declaration and exposes its name, version, key and step names', () => {
    const saga = defineSaga({
      name: 'order.v-1_x',
      version: 3,
      steps: [
        { name: 'a', action: noop, compensation: noop, compensationRequired: true },
        { name: 'wait', sleepMs: 1_000 },
        { name: 'b', action: noop, retry: { maxAttempts: 5, jitter: 'equal' }, timeoutMs: 100 },
      ],
    })
    expect(saga).toMatchObject({ name: 'order.v-1_x', version: 3, key: 'order.v-1_x@3' })
    expect(saga.stepNames).toEqual(['a', 'wait', 'b'])
    expect(Object.isFrozen(saga)).toBe(true)
  })

  it('types the context step by step from the actions’ results', () => {
    const saga = defineSaga({
      name: 'typed',
      version: 1,
      input: (raw) => raw as { orderId: string; amount: number },
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => {
            expectTypeOf(ctx.input.orderId).toEqualTypeOf<string>()
            expectTypeOf(ctx.idempotencyKey).toEqualTypeOf<string>()
            return { reservationId: `r-${ctx.input.orderId}` }
          },
          compensation: async (ctx) => {
            // Optional: a compensation also runs for an attempt that recorded no outcome.
            expectTypeOf(ctx.context.reservationId).toEqualTypeOf<string | undefined>()
            expectTypeOf(ctx.reason).toEqualTypeOf<string>()
          },
        },
        { name: 'pause', sleepMs: 10 },
        {
          name: 'charge',
          action: async (ctx) => {
            expectTypeOf(ctx.context.reservationId).toEqualTypeOf<string>()
            // @ts-expect-error: not in the context yet
            ctx.context.chargeId
            return { chargeId: 7 }
          },
        },
        {
          name: 'notify',
          action: async (ctx) => {
            expectTypeOf(ctx.context.chargeId).toEqualTypeOf<number>()
          },
        },
      ],
    })
    expectTypeOf(saga).toEqualTypeOf<
      SagaDefinition<
        { orderId: string; amount: number },
        { reservationId: string } & { chargeId: number }
      >
    >()
    expectTypeOf<StepContext<{ a: 1 }, { b: 2 }>['context']>().toEqualTypeOf<Readonly<{ b: 2 }>>()
    expectTypeOf<CompensationContext<unknown, object>['reason']>().toEqualTypeOf<string>()
  })
})

describe('sagaCrashAtFromEnv', () => {
  it('ignores an absent value and other areas', () => {
    expect(sagaCrashAtFromEnv(undefined)).toBeUndefined()
    expect(sagaCrashAtFromEnv('')).toBeUndefined()
    expect(sagaCrashAtFromEnv('relay:after-publish')).toBeUndefined()
  })

  it.each([
    'saga:nowhere',
    'saga:after-step-commit:charge:0',
    'saga:after-step-commit::2',
    'saga:a:b:c:d',
  ])('refuses %s', (value) => {
    expect(() => sagaCrashAtFromEnv(value)).toThrow(InvalidOptionError)
  })

  it('parses point, step and count', () => {
    expect(typeof sagaCrashAtFromEnv('saga:after-claim')).toBe('function')
    expect(typeof sagaCrashAtFromEnv('saga:after-claim:3')).toBe('function')
    expect(typeof sagaCrashAtFromEnv('saga:after-step-commit:charge')).toBe('function')
    expect(typeof sagaCrashAtFromEnv('saga:before-compensation:reserve:2')).toBe('function')
    // Reaching other points or other steps does nothing (the process would die otherwise).
    const faults = sagaCrashAtFromEnv('saga:after-step-commit:charge')!
    expect(faults('after-step-commit', { sagaId: 's', step: 'reserve' })).toBeUndefined()
    expect(faults('before-step', { sagaId: 's', step: 'charge' })).toBeUndefined()
  })
})
