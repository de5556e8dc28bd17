"""The new text of a message in more languages and shapes: quote separators and copied header
blocks of Swedish, Portuguese, Polish, Finnish, Chinese, Japanese and Korean clients, CJK
attribution lines, and closing legal disclaimers cut away (but never the message itself)."""

from __future__ import annotations

import time

import pytest

from triage.parsing.quotes import cut_disclaimer, new_text


@pytest.mark.parametrize(
    "separator",
    [
        "-----Ursprungligt meddelande-----",
        "-----Mensagem original-----",
        "-----Oryginalna wiadomość-----",
        "-----Alkuperäinen viesti-----",
        "-----原始邮件-----",
        "-----元のメッセージ-----",
        "-----원본 메시지-----",
    ],
)
def test_separators_in_other_languages_end_the_new_text(separator: str) -> None:
    """Everything from an Outlook-style separator on is the thread."""
    text = f"Please send the price for 20 units.\n\n{separator}\nOld text we sent before.\n"
    assert new_text(text).text == "Please send the price for 20 units."


@pytest.mark.parametrize(
    "block",
    [
        "差出人: 山田 太郎 <taro@client.example>\n送信日時: 2024年5月14日 9:12\n件名: 見積",
        "发件人： 张伟 <zw@client.example>\n发送时间： 2024年5月14日 9:12\n主题： 报价",
        "Od: Jan Kowalski <jan@client.example>\nWysłano: wtorek, 14 maja 2024\nTemat: Oferta",
        "Lähettäjä: Matti <matti@client.example>\nLähetetty: 14. toukokuuta 2024\nAihe: Tarjous",
    ],
)
def test_copied_header_blocks_in_other_languages_end_the_new_text(block: str) -> None:
    """Outlook's copied header block (with a full-width colon in Chinese) starts the thread."""
    text = f"見積もりをお願いします。\n\n{block}\n\nold\n"
    assert new_text(text).text == "見積もりをお願いします。"


@pytest.mark.parametrize(
    "attribution",
    [
        "张伟 <zw@client.example> 于2024年5月14日周二 09:12写道：",
        "2024年5月14日(火) 9:12 山田太郎 <taro@client.example>:",
        "2024년 5월 14일 (화) 오전 9:12, 홍길동 <h@client.example>님이 작성:",
    ],
)
def test_cjk_attribution_lines_start_the_quote(attribution: str) -> None:
    """Gmail's Chinese, Japanese and Korean "… wrote:" lines introduce the quoted thread."""
    text = f"请报价。\n\n{attribution}\n> 旧的邮件\n> 更多\n"
    assert new_text(text).text == "请报价。"


def test_a_closing_disclaimer_is_cut() -> None:
    """A confidentiality footer longer than the message is not part of what the sender wrote."""
    footer = (
        "This e-mail and any attachments are confidential and intended solely for the "
        "addressee. If you are not the intended recipient, please delete it. " * 3
    )
    text = f"Hi, can you quote 40 pumps for May?\n\nThanks\nPat\n\n{footer}"
    reply = new_text(text)
    assert reply.text == "Hi, can you quote 40 pumps for May?"
    assert "confidential" not in reply.signature


@pytest.mark.parametrize(
    "footer",
    [
        "Diese E-Mail enthält vertrauliche Informationen. Wenn Sie nicht der richtige Empfänger "
        "sind, informieren Sie bitte den Absender.",
        "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention "
        "exclusive de ses destinataires.",
        "本メールは機密情報を含んでいます。誤って受信された場合は削除してください。",
        "Ta wiadomość jest poufna i przeznaczona wyłącznie dla adresata.",
    ],
)
def test_disclaimers_in_other_languages_are_cut(footer: str) -> None:
    """German, French, Japanese and Polish confidentiality footers."""
    body, cut = cut_disclaimer(f"Bitte um ein Angebot für 12 Stück.\n\n{footer}")
    assert body == "Bitte um ein Angebot für 12 Stück."
    assert cut == footer


def test_a_message_that_starts_like_a_disclaimer_is_kept() -> None:
    """ "This email is to request …" at the top is the message, even with "confidential" in it."""
    text = "This email is to request a confidential quote for 500 units of model X."
    assert cut_disclaimer(text) == (text, "")
    assert new_text(text).text == text


def test_an_opener_without_confidentiality_words_is_kept() -> None:
    """A closing line that only sounds like a disclaimer stays."""
    text = "We need 30 licences by June.\n\nThis message was typed on a train, sorry for typos."
    assert cut_disclaimer(text) == (text, "")


@pytest.mark.parametrize(
    "text",
    [
        "Hi,\nwe are a hospital in Leeds.\nThis email is to ask for a quote for confidential "
        "document shredding, 40 bins a month.",
        "Hola,\nsomos una empresa de logística.\nEste correo es para pedir un presupuesto de 40 "
        "palés con entrega al destinatario final en Madrid.",
        "Guten Tag,\nwir sind ein Reisebüro.\nDiese E-Mail ist unsere Anfrage: 30 Lizenzen, "
        "Rechnung an den Empfänger in Köln.",
    ],
)
def test_a_request_that_names_one_disclaimer_word_is_kept(text: str) -> None:
    """A sentence that opens like a disclaimer but is the request ("This email is to ask for a
    quote for confidential shredding") is the message: one such word is not a disclaimer."""
    assert cut_disclaimer(text) == (text, "")
    assert "40" in new_text(text).text or "30" in new_text(text).text


def test_disclaimer_search_does_not_rescan_the_text_before_it() -> None:
    """Many disclaimer-like openers at the end of a long text: the text before them is not
    split again for each one (that took a third of a second on a 60 KB message)."""
    tail = "this email\n" * 360
    text = ("word " * 12_000)[: 59_990 - len(tail)] + tail
    started = time.process_time()
    assert cut_disclaimer(text) == (text, "")
    assert time.process_time() - started < 0.05


@pytest.mark.parametrize(
    "text",
    [
        "Dzień dobry,\nchcemy zarezerwować salę.\nOd: 12.05.2025\nDo: 15.05.2025\n"
        "Temat: szkolenie BHP\nLiczba osób: 20\nProszę o wycenę.",
        "Hej,\nFra: København\nTil: Aarhus\nEmne: flytning, 3 værelser\nHvad koster det?",
        "Olá,\nDe: Lisboa\nPara: Porto\nAssunto: mudança de escritório, 30 pessoas\nObrigado",
        "Merhaba,\nKimden: İstanbul\nKime: Ankara\nKonu: 20 palet nakliye fiyatı\nTeşekkürler",
    ],
)
def test_from_to_subject_lines_of_a_request_are_not_a_copied_header_block(text: str) -> None:
    """ "From: Lisbon / To: Porto / Subject: office move" in a moving or booking request names
    neither an address nor a time, as every copied header block does: the request is kept."""
    assert new_text(text).text == text


@pytest.mark.parametrize(
    ("separator", "block"),
    [
        (
            "---------- 転送メッセージ ----------",
            "From: 宮本 支配人\nTo: 岡部\n件名: 客室リネン入替",
        ),
        ("-------- Wiadomość przekazana --------", "Od: Halina\nDo: Dział Zakupów\nTemat: środki"),
        ("________________________________", "From: Kowalski, Jan\nTo: Sales\nSubject: Order"),
    ],
)
def test_a_header_block_of_names_only_after_a_separator_line_is_still_cut(
    separator: str, block: str
) -> None:
    """An internal forward names people without addresses or times, but after a rule line."""
    text = f"Please quote the items below.\n\n{separator}\n{block}\n\nOld text.\n"
    kept = new_text(text).text
    assert kept.startswith("Please quote the items below.")
    assert block.partition("\n")[0] not in kept and "Old text" not in kept


@pytest.mark.parametrize(
    "footer",
    [
        "This email and any attachments are intended solely for the addressee.",
        "AVISO DE CONFIDENCIALIDADE: Esta mensagem pode conter informações privilegiadas.",
        "Diese E-Mail enthält vertrauliche Informationen. Wenn Sie nicht der richtige Adressat "
        "sind, informieren Sie bitte den Absender.",
        "Disclaimer: De informatie is uitsluitend bestemd voor de geadresseerde.",
    ],
)
def test_disclaimers_naming_two_different_disclaimer_words_are_cut(footer: str) -> None:
    """Footers of the corpus that name the addressee, privilege or the word "disclaimer"."""
    body, cut = cut_disclaimer(f"Please send a quote for 12 units.\n\n{footer}")
    assert body == "Please send a quote for 12 units."
    assert cut == footer
