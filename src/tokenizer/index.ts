/**
 * Public surface of the tokenizer folder: tokenizer.json / chat template handling and streaming detokenization
 * (MODEL.md §3, SERVING.md §10).
 */

export {
  Tokenizer,
  findNestedQuantifier,
  MAX_ENCODE_CHARS,
  MAX_RENDERED_CHARS,
  type ChatContentPart,
  type ChatMessage,
  type ChatTemplateOptions,
} from './tokenizer.js';
export { IncrementalDecoder, type DecodeSource, type IncrementalDecoderOptions } from './decoder.js';
