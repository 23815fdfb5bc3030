// Bundles GraphiQL (main.jsx and its CSS) into `<outdir>/graphiql.js` and `graphiql.css`.
// Run by http/build.rs after `npm ci`; `node build.mjs <outdir>`.
import * as esbuild from 'esbuild';
import { fileURLToPath } from 'node:url';

const outdir = process.argv[2];
if (!outdir) {
  console.error('usage: node build.mjs <outdir>');
  process.exit(2);
}
await esbuild.build({
  entryPoints: { graphiql: fileURLToPath(new URL('./main.jsx', import.meta.url)) },
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  loader: { '.woff2': 'dataurl', '.png': 'dataurl' },
  legalComments: 'linked',
  outdir,
  logLevel: 'warning',
});
