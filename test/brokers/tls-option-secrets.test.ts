// The `tls` option's checks refuse what they do not take, but must not echo it: a user who
// hands the adapter the TLS settings another client takes (`pfx`, `privateKey`), a key or
// passphrase without its certificate, or a private key in place of the CA
// (`ca: readFileSync('client.key')`) would otherwise find the passphrase, or the start of the key's secret bytes, in the INVALID_OPTION message (and its
// `value`), which ends up in logs. Nothing connects: the checks run at construction.
import { generateKeyPairSync } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import type { InvalidOptionError } from '../../src/core/errors.js'
import { createWithTls, refusal } from './support.js'

// An EC key in SEC1 PEM: its secret scalar starts 7 bytes into the DER, within the 60
// characters an error message quotes of a string.
const ecKey = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  .privateKey.export({ type: 'sec1', format: 'pem' })
  .toString()
const keyBody = ecKey.split('\n')[1] ?? ''
const passphrase = 'correct-horse-battery'

/** Neither the error's message nor its value shows the passphrase or the start of the key. */
function expectHidden(error: InvalidOptionError): void {
  for (const shown of [error.message, JSON.stringify(error.value)]) {
    expect(shown).not.toContain(passphrase)
    expect(shown).not.toContain(keyBody.slice(0, 12))
  }
}

describe.each(Object.entries(createWithTls))('%s: tls option refusals', (name, make) => {
  it('name an unknown setting without quoting its value (a passphrase, a key)', () => {
    for (const [key, value] of [
      ['password', passphrase],
      ['privateKey', ecKey],
      ['pfx', Buffer.from(ecKey)],
    ] as const) {
      const error = refusal(() => make({ [key]: value }))
      expect(error.option).toBe(`${name}.tls.${key}`)
      expect(error.message).toMatch(/no such option/)
      expectHidden(error)
    }
  })

  it('refuse a key or passphrase without its certificate without quoting it', () => {
    for (const [tls, option, text] of [
      [{ key: ecKey }, `${name}.tls.key`, /needs its certificate/],
      [{ key: Buffer.from(ecKey), passphrase }, `${name}.tls.key`, /needs its certificate/],
      [{ passphrase }, `${name}.tls.passphrase`, /only with a key/],
    ] as const) {
      const error = refusal(() => make(tls))
      expect(error.option).toBe(option)
      expect(error.message).toMatch(text)
      expectHidden(error)
    }
  })

  it('keep a key or passphrase inside an array or object (as tls.connect takes them) out of the error', () => {
    for (const [tls, option] of [
      [{ pfx: [{ buf: Buffer.from(ecKey), passphrase }] }, `${name}.tls.pfx`],
      [{ key: [ecKey] }, `${name}.tls.key`],
      [{ key: [{ pem: ecKey, passphrase }], keyFile: '/k.pem' }, `${name}.tls`],
      [{ passphrase: [passphrase] }, `${name}.tls.passphrase`],
      [{ ca: [{ pem: ecKey }] }, `${name}.tls.ca[0]`],
    ] as const) {
      const error = refusal(() => make(tls))
      expect(error.option).toBe(option)
      expectHidden(error)
    }
  })

  it('refuse a private key given as the CA without quoting it', () => {
    for (const [ca, option] of [
      [ecKey, `${name}.tls.ca`],
      [[ecKey], `${name}.tls.ca[0]`],
    ] as const) {
      const error = refusal(() => make({ ca }))
      expect(error.option).toBe(option)
      expect(error.message).toMatch(/no PEM certificate/)
      expectHidden(error)
    }
  })
})

// The whole `tls` section misspelt (`tsl`) is an unknown adapter option: its value, an object
// holding the key and passphrase, was kept as the error's `value`.
describe.each(Object.entries(createWithTls))('%s: a misspelt tls section', (name, make) => {
  it('is refused by name without keeping its key or passphrase in the error', () => {
    const error = refusal(() =>
      make(undefined, { tsl: { key: ecKey, passphrase }, ssl: [passphrase] }),
    )
    expect(error.option).toBe(`${name}.tsl`)
    expectHidden(error)
  })
})

// A key's PEM text given as keyFile (easy with a secret mounted as an environment variable):
// reading it as a path failed with Node's ENOENT, whose message quotes the path: the whole key.
describe.each(Object.entries(createWithTls))('%s: PEM text given as a file', (name, make) => {
  it('is refused as not a path, without quoting it', () => {
    for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
      const error = refusal(() => make({ [key]: ecKey }))
      expect(error.option).toBe(`${name}.tls.${key}`)
      expect(error.message).toMatch(/the path of a PEM file, not PEM text/)
      expectHidden(error)
    }
  })
})
