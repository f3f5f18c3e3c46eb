"""Every user error is one line on stderr and exit status 2, never a traceback."""
import pytest
from helpers import MYSQL, one_line_error, run_cli


@pytest.fixture
def dla(tmp_path, msgs_csv):
    r = run_cli("-d", "dla", "-t", "msgs", "--import_csv", msgs_csv, "--db_dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    return str(tmp_path)


def test_end_to_end_sentences_and_listing(dla):
    r = run_cli("-d", "dla", "-t", "msgs", "-c", "user_id", "--add_sent_tokenized", "--db_dir", dla)
    assert r.returncode == 0 and "wrote 741 rows" in r.stdout and "msgs_stoks" in r.stdout
    r = run_cli("-d", "dla", "--ls", "--db_dir", dla)
    assert r.stdout.split() == ["table", "msgs", "sentences", "msgs_stoks"]


def test_missing_database(tmp_path):
    one_line_error(run_cli("-d", "nope", "-t", "msgs", "--add_sent_tokenized", "--db_dir", str(tmp_path)),
                   "nope", "--import_csv")


def test_missing_table(dla):
    one_line_error(run_cli("-d", "dla", "-t", "other", "--add_sent_tokenized", "--db_dir", dla),
                   "'other' not found")


def test_missing_column(dla):
    one_line_error(run_cli("-d", "dla", "-t", "msgs", "--add_sent_tokenized", "--message_field", "text",
                            "--db_dir", dla), "'text' not found", "message_id")


def test_hostile_table_name(dla):
    one_line_error(run_cli("-d", "dla", "-t", "msgs; DROP TABLE msgs", "--add_sent_tokenized",
                            "--db_dir", dla), "invalid table name")


def test_unparseable_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('message_id,message\n1,"never closed\n2,x\n')
    one_line_error(run_cli("-d", "x", "-t", "m", "--import_csv", str(bad), "--db_dir", str(tmp_path)),
                   "cannot parse CSV")


def test_missing_csv(tmp_path):
    one_line_error(run_cli("-d", "x", "-t", "m", "--import_csv", str(tmp_path / "no.csv"),
                            "--db_dir", str(tmp_path)), "not found")


def test_unreachable_mysql(tmp_path):
    one_line_error(run_cli("-d", "x", "--ls", "--db_engine", "mysql", "--mysql_host", "127.0.0.1",
                            "--mysql_port", "1", "--mysql_config_file", MYSQL["mysql_config_file"]),
                   "cannot reach the MySQL server at 127.0.0.1:1", "--mysql_host")


def test_mysql_option_file_problems_say_what_they_are(tmp_path):
    """Issue 22.5: a misspelled option file is an error, not a silent login as the OS user; the
    server named in a message is the option file's; a refused login says it was refused."""
    one_line_error(run_cli("-d", "x", "--ls", "--db_engine", "mysql", "--mysql_config_file", str(tmp_path / "my.cfn")),
                   "MySQL option file not found", "my.cfn")
    unreachable = tmp_path / "unreachable.cnf"
    unreachable.write_text("[client]\nhost=127.0.0.1\nport=1\nuser=root\n")
    one_line_error(run_cli("-d", "x", "--ls", "--db_engine", "mysql", "--mysql_config_file", str(unreachable)),
                   "cannot reach the MySQL server at 127.0.0.1:1")


def test_mysql_unknown_user_is_a_refused_login(mysql_db):
    _, conn = mysql_db
    one_line_error(run_cli("-d", "x", "--ls", "--db_engine", "mysql", "--mysql_host", conn["mysql_host"],
                            "--mysql_port", str(conn["mysql_port"]), "--mysql_user", "no_such_user_bertfeat",
                            "--mysql_config_file", conn["mysql_config_file"]),
                   "refused the login", f"{conn['mysql_host']}:{conn['mysql_port']}")


def test_nothing_to_do():
    one_line_error(run_cli("-d", "x"), "nothing to do")


def test_add_bert_errors_are_one_line(dla, tmp_path):
    common = ["-d", "dla", "-t", "msgs", "-c", "user_id", "--add_bert", "--db_dir", dla,
              "--bert_model", "sentence-transformers/all-MiniLM-L6-v2", "--model_dir", str(tmp_path)]
    one_line_error(run_cli(*common, "--bert_msg_aggregation", "avg"), "unknown --bert_msg_aggregation")
    one_line_error(run_cli(*common, "--emb_layers", "12"), "out of range", "0..5")
    one_line_error(run_cli(*common, "--precision", "bf16"), "unknown --precision", "fp16 (CUDA)")
    one_line_error(run_cli(*common, "--precision", "int8", "--device", "cuda"), "int8 runs on the CPU")
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        one_line_error(run_cli(*common, "--device", "cuda"), "--device cuda needs onnxruntime-gpu")


def test_a_mistyped_flag_is_one_line(tmp_path):
    one_line_error(run_cli("--frobnicate"), "unrecognized arguments: --frobnicate", "--help")
    one_line_error(run_cli("-d", "x", "--precision"), "--precision", "expected one argument")


def test_a_missing_feature_table_points_at_add_bert(dla):
    one_line_error(run_cli("-d", "dla", "--db_dir", dla, "-f", "feat$nope$msgs$user_id$16to16",
                            "--outcome_table", "msgs", "--outcomes", "user_id", "--nfold_test_regression"),
                   "not found", "--add_bert")


def test_errors_name_flags_on_the_command_line_and_keywords_from_python(dla, msgs_csv):
    import bertfeat as package
    one_line_error(run_cli("-d", "dla", "-t", "msgs", "--import_csv", msgs_csv, "--db_dir", dla),
                   "pass --overwrite to replace it")
    conn = {"db_dir": dla}
    with pytest.raises(package.BertfeatError, match="pass overwrite=True to replace it"):
        package.import_csv("dla", "msgs", msgs_csv, **conn)
    with pytest.raises(package.BertfeatError, match="unknown bert_msg_aggregation 'avg'"):
        package.add_bert("dla", "msgs", bert_msg_aggregation=["avg"], **conn)
    with pytest.raises(package.BertfeatError, match="precision='int8' runs on the CPU: use device='cpu'"):
        package.add_bert("dla", "msgs", precision="int8", device="cuda", **conn)
    with pytest.raises(package.BertfeatError, match="unknown keyword 'bert_layer' .did you mean 'bert_layers'"):
        package.add_bert("dla", "msgs", bert_layer=[4], **conn)


def test_version():
    from bertfeat import __version__
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bertfeat {__version__}"


def test_a_missing_message_column_names_its_flag(dla):
    one_line_error(run_cli("-d", "dla", "-t", "msgs", "--add_sent_tokenized", "--db_dir", dla,
                            "--message_field", "text"),
                   "column 'text' not found in table 'msgs' (named by --message_field)")
