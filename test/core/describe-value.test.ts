// describeValue renders a refused value in every InvalidOptionError (and stored-data) message.
// It said "an object" for any object, so a Map given where a plain object is expected read
// `expected a plain object, not a Map, got an object`: it now names a built-in whose data is
// not in its properties (the kinds isObjectRecord refuses, by the same test), and still never
// throws, whatever the object's getters, traps or prototype do.
import { runInNewContext } from 'node:vm'
import { describe, expect, it } from 'vitest'
import { describeValue, InvalidOptionError } from '../../src/core/errors.js'

describe('describeValue', () => {
  it.each([
    ['a Map', new Map([['a', 1]])],
    ['a Set', new Set([1])],
    ['a Date', new Date(0)],
    ['a RegExp', /x/],
    ['a Headers', new Headers({ 'x-a': '1' })],
    ['a URLSearchParams', new URLSearchParams('a=1')],
    // A Buffer is a Uint8Array (Symbol.toStringTag), as the refusal names it.
    ['a Uint8Array', Buffer.from('x')],
    ['an ArrayBuffer', new ArrayBuffer(2)],
    ['an Error', new TypeError('x')],
    ['a Promise', Promise.resolve(1)],
    ['a String', Object('x')],
    // A subclass of a built-in is one; another realm's is one too.
    ['a Map', new (class Registry extends Map {})()],
    ['a Map', runInNewContext('new Map()')],
  ])('names %s', (kind, value) => {
    expect(describeValue(value)).toBe(kind)
  })

  it('says "an object" of plain records and of objects made from a plain prototype', () => {
    const another = runInNewContext('({ a: 1 })')
    for (const value of [{}, { a: 1 }, Object.create(null), Object.create({ a: 1 }), another])
      expect(describeValue(value)).toBe('an object')
  })

  // "expected a plain object, got an object" read as if a plain object were refused.
  it("names a class instance's class, when its name is a plain name", () => {
    class Limits {
      readonly maxConcurrent = 1
    }
    class Sub extends Limits {}
    expect(describeValue(new Limits())).toBe('an instance of Limits')
    expect(describeValue(new Sub())).toBe('an instance of Sub')
    expect(describeValue(runInNewContext('new (class Remote {})()'))).toBe('an instance of Remote')
    // Only a name goes into a message; an anonymous class, or a name that is not one, is not.
    const Anonymous = (() => class {})()
    Object.defineProperty(Anonymous, 'name', { value: '' })
    const Odd = class {}
    Object.defineProperty(Odd, 'name', { value: 'x, got nothing' })
    expect(describeValue(new Anonymous())).toBe('an object')
    expect(describeValue(new Odd())).toBe('an object')
    // A constructor getter that throws, or a prototype without a constructor.
    const throwing = Object.create(
      Object.defineProperty({}, 'constructor', {
        get() {
          throw new Error('getter')
        },
      }),
    )
    expect(describeValue(throwing)).toBe('an object')
    expect(describeValue(Object.create(Object.create(null)))).toBe('an object')
  })

  it('keeps what it said of other values', () => {
    expect(describeValue([1, 2])).toBe('an array of 2')
    expect(describeValue(() => 1)).toBe('a function')
    expect(describeValue(null)).toBe('null')
    expect(describeValue('x')).toBe('"x"')
    // Not an object: it was called one.
    expect(describeValue(Symbol('x'))).toBe('a symbol')
  })

  it('never throws: revoked proxies, throwing traps and getters, a long or odd tag', () => {
    const revocable = Proxy.revocable({}, {})
    revocable.revoke()
    const trapped = new Proxy(
      {},
      {
        getPrototypeOf() {
          throw new Error('trap')
        },
      },
    )
    class ThrowingTag extends Map {
      override get [Symbol.toStringTag](): string {
        throw new Error('tag')
      }
    }
    // What cannot be looked at is an object; a built-in whose tag cannot be read, one.
    expect(describeValue(revocable.proxy)).toBe('an object')
    expect(describeValue(trapped)).toBe('an object')
    expect(describeValue(new ThrowingTag())).toBe('a built-in object')
    // The tag is the object's to choose: only a name is copied into the message.
    class LongTag extends Map {
      override get [Symbol.toStringTag](): string {
        return 'M'.repeat(10_000)
      }
    }
    class OddTag extends Set {
      override get [Symbol.toStringTag](): string {
        return 'x, got nothing'
      }
    }
    expect(describeValue(new LongTag())).toBe('a built-in object')
    expect(describeValue(new OddTag())).toBe('a built-in object')
  })

  it('is what an InvalidOptionError says it got', () => {
    expect(new InvalidOptionError('o', 'a plain object', new Map()).message).toBe(
      'o: expected a plain object, got a Map',
    )
  })
})
