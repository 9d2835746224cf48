import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { checkKnownOptions, checkOptionKeys, optionKeys } from '../../src/core/validate.js'

interface Sample {
  readonly required: number
  readonly optional?: string
}

describe('optionKeys and checkKnownOptions', () => {
  const known = optionKeys<Sample>({ required: true, optional: true })

  it('lists every key of the options type', () => {
    expect([...known].sort()).toEqual(['optional', 'required'])
  })

  it('accepts known keys and undefined values of unknown ones', () => {
    expect(() =>
      checkKnownOptions('sample', { required: 1, stray: undefined }, known),
    ).not.toThrow()
  })

  it('refuses a misspelt key, naming it and the known ones', () => {
    const attempt = () => checkKnownOptions('sample', { required: 1, optinal: 'x' }, known)
    expect(attempt).toThrow(InvalidOptionError)
    expect(attempt).toThrow(/sample\.optinal.*required, optional/)
  })

  it('lists the keys of every member of a union of option shapes', () => {
    type Either = { readonly url: string } | { readonly db: object; readonly schema?: string }
    const either = optionKeys<Either>({ url: true, db: true, schema: true })
    expect([...either].sort()).toEqual(['db', 'schema', 'url'])
    // @ts-expect-error: 'schema' belongs to one member only, and is still required here.
    optionKeys<Either>({ url: true, db: true })
  })

  it('is refused by TypeScript when a key of the type is missing', () => {
    // @ts-expect-error: 'optional' is missing, so the set would refuse a real option.
    optionKeys<Sample>({ required: true })
  })
})

describe('checkOptionKeys', () => {
  const known = optionKeys<Sample>({ required: true, optional: true })

  it('refuses a known option set to null, naming it; undefined is the default', () => {
    expect(() =>
      checkOptionKeys('sample', { required: 1, optional: undefined }, known),
    ).not.toThrow()
    const attempt = () => checkOptionKeys('sample', { required: 1, optional: null }, known)
    expect(attempt).toThrow(InvalidOptionError)
    expect(attempt).toThrow(/^sample\.optional: .*not null/)
    expect(() => checkOptionKeys('sample', { optional: null }, known, { bareNames: true })).toThrow(
      /^optional: /,
    )
  })

  it('keeps null in the keys named as data, and still refuses unknown keys', () => {
    const data = new Set(['optional'])
    expect(() => checkOptionKeys('sample', { optional: null }, known, { data })).not.toThrow()
    expect(() => checkOptionKeys('sample', { optinal: 1 }, known, { data })).toThrow(/optinal/)
  })
})
