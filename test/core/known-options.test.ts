import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { checkKnownOptions, optionKeys } from '../../src/core/validate.js'

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
